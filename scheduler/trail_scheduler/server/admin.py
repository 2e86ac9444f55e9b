"""The pod admin API on its own port, behind a bearer token.

Requests are validated here (wire models, probe fetched from an allowed source and
checked against its sha256), then applied inside the engine by RPC, which validates
against the model and commits atomically between steps; on any error the old settings
stay and the reply (4xx) says why.

Every request but ``/health`` passes :class:`AdminGuard` first: the token is checked
before a byte of the body is read, the body is capped and read under a deadline, and
only a few requests run at once, so nobody without the token can make the pod parse,
buffer or wait on anything.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from trail_contract.admin_api import ADMIN_PREFIX, ConfigUpdate, ConfigView, StatsView
from trail_scheduler.server import metrics
from trail_scheduler.server.probe_source import ProbeFetchError, ProbeSources
from trail_scheduler.vllm.control import EngineControl, GenerationConflict, SettingsRefused

logger = logging.getLogger("trail.admin")

MAX_BODY_BYTES = 8 * 1024 * 1024  # a settings change with an inline base64 probe of up to 6 MiB
MAX_CONCURRENT_REQUESTS = 4  # admin requests in flight at once; more get 503 (the operator sends one per pod)
BODY_DEADLINE_SECONDS = 30.0  # to receive a whole body


class AdminToken:
    """The bearer token: fixed (``TRAIL_ADMIN_TOKEN``, hand runs) or read from a file and read
    again whenever the file changes, so a rotated Kubernetes Secret (its mount swaps a
    symlink) reaches a running pod. An empty or unreadable file lets no request in."""

    def __init__(self, value: str | None = None, *, path: str | os.PathLike[str] | None = None) -> None:
        if (value is None) == (path is None):
            raise ValueError("give exactly one of a token value or a token file")
        self._path = None if path is None else Path(path)
        self._value = (value or "").strip().encode() or None
        self._seen: tuple[int, ...] | None = None

    def current(self) -> bytes | None:
        """The token now in force; None: refuse everyone. One stat per request."""
        if self._path is None:
            return self._value
        try:
            info = self._path.stat()  # follows the symlinks, so a swapped ..data is a new inode
        except OSError:
            self._seen = self._value = None
            return None
        seen = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            try:
                self._value = self._path.read_bytes().strip() or None
            except OSError:
                self._value = None
            self._seen = seen
            if self._value is None:
                logger.warning("admin token file %s is empty or unreadable: every admin request gets 401", self._path)
        return self._value

    def accepts(self, authorization: list[bytes]) -> bool:
        token = self.current()
        if token is None or len(authorization) != 1:
            return False
        scheme, _, credentials = authorization[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


class AdminGuard:
    """ASGI middleware: token, then concurrency, then a capped body read under a deadline.

    The body is read whole here (it is small) and replayed to the app, so nothing
    downstream reads from the socket; chunked bodies are capped the same way.
    """

    def __init__(self, app, token: AdminToken, *, max_body: int, max_requests: int, body_seconds: float) -> None:
        self.app, self.token = app, token
        self.max_body, self.max_requests, self.body_seconds = max_body, max_requests, body_seconds
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        if not self.token.accepts(headers.get(b"authorization", [])):
            await _reply(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
            return
        if self.in_flight >= self.max_requests:
            await _reply(send, 503, f"the admin API is busy ({self.max_requests} requests in flight); retry")
            return
        self.in_flight += 1
        try:
            body = await self._body(headers.get(b"content-length", []), receive, send)
            if body is not None:
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.in_flight -= 1

    async def _body(self, declared: list[bytes], receive, send) -> bytes | None:
        """The request body, or None once a reply (413, 408, 400) is sent or the client left."""
        if len(declared) > 1 or (declared and not declared[0].isdigit()):
            await _reply(send, 400, "invalid Content-Length")
            return None
        if declared and int(declared[0]) > self.max_body:
            await _reply(send, 413, f"request body over the {self.max_body}-byte limit")
            return None
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    size += len(message.get("body", b""))
                    if size > self.max_body:
                        await _reply(send, 413, f"request body over the {self.max_body}-byte limit")
                        return None
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            await _reply(send, 408, f"request body not received within {self.body_seconds:g} s")
            return None


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()  # waits for the disconnect, as the server's own receive does
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _reply(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_admin_app(
    engine,
    token: AdminToken,
    sources: ProbeSources,
    *,
    max_body: int = MAX_BODY_BYTES,
    max_requests: int = MAX_CONCURRENT_REQUESTS,
    body_seconds: float = BODY_DEADLINE_SECONDS,
) -> FastAPI:
    app = FastAPI(title="TRAIL pod admin API", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AdminGuard, token=token, max_body=max_body, max_requests=max_requests, body_seconds=body_seconds)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        return JSONResponse({"detail": f"invalid settings: {problems}"}, status_code=422)

    control = EngineControl(engine)

    @app.get(f"{ADMIN_PREFIX}/config", response_model=ConfigView, response_model_by_alias=True)
    async def get_config() -> ConfigView:
        return await control.config()

    @app.put(f"{ADMIN_PREFIX}/config", response_model=ConfigView, response_model_by_alias=True)
    async def put_config(update: ConfigUpdate) -> ConfigView:
        probe_bytes = None
        if update.probe is not None:
            try:
                probe_bytes = await sources.fetch(update.probe)
            except ProbeFetchError as error:
                raise HTTPException(422, str(error)) from None
            except Exception:  # a bug or an input nobody foresaw: a refusal, logged, never a 500
                logger.exception("fetching a probe failed unexpectedly")
                raise HTTPException(422, "the probe could not be fetched or checked (logged on the pod)") from None
        try:
            config = await control.apply(update, probe_bytes)
        except GenerationConflict as error:
            raise HTTPException(409, str(error)) from None
        except SettingsRefused as error:
            raise HTTPException(422, str(error)) from None
        metrics.record_config(config)
        return config

    @app.get(f"{ADMIN_PREFIX}/stats", response_model=StatsView, response_model_by_alias=True)
    async def get_stats() -> StatsView:
        return await control.stats()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
