"""The pod admin API on its own port, behind a bearer token.

Requests are validated here (wire models, probe download and sha256), then applied
inside the engine by RPC, which validates against the model and commits atomically
between steps; on any error the old settings stay and the reply says why.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trail_scheduler.api import ADMIN_PREFIX, ConfigUpdate, ConfigView, ProbeSource, StatsView
from trail_scheduler.server import metrics
from trail_scheduler.vllm.control import EngineControl, SettingsRefused

PROBE_DOWNLOAD_LIMIT = 64 * 1024 * 1024


class ProbeFetchError(ValueError):
    pass


def fetch_probe(source: ProbeSource) -> bytes:
    """The probe file's bytes from inline base64 or a URL, checked against its sha256."""
    if source.data is not None:
        try:
            payload = base64.b64decode(source.data, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ProbeFetchError(f"probe.data is not valid base64: {error}") from None
    elif source.url.startswith("file://"):
        path = Path(source.url.removeprefix("file://"))
        try:
            payload = path.read_bytes()
        except OSError as error:
            raise ProbeFetchError(f"cannot read probe {source.url}: {error.strerror}") from None
    else:
        try:
            response = httpx.get(source.url, timeout=30, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ProbeFetchError(f"cannot download probe {source.url}: {error}") from None
        payload = response.content
    if len(payload) > PROBE_DOWNLOAD_LIMIT:
        raise ProbeFetchError(f"probe file is {len(payload)} bytes, over the {PROBE_DOWNLOAD_LIMIT} limit")
    if source.sha256 is not None:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != source.sha256:
            raise ProbeFetchError(f"probe sha256 is {digest}, expected {source.sha256}")
    return payload


def build_admin_app(engine, token: str) -> FastAPI:
    app = FastAPI(title="TRAIL pod admin API", docs_url=None, redoc_url=None)
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
        )
        return JSONResponse({"detail": f"invalid settings: {problems}"}, status_code=422)

    control = EngineControl(engine)

    @app.get(f"{ADMIN_PREFIX}/config", response_model=ConfigView, response_model_by_alias=True)
    async def get_config(_: None = Depends(authorised)) -> ConfigView:
        return await control.config()

    @app.put(f"{ADMIN_PREFIX}/config", response_model=ConfigView, response_model_by_alias=True)
    async def put_config(update: ConfigUpdate, _: None = Depends(authorised)) -> ConfigView:
        try:
            probe_bytes = None if update.probe is None else fetch_probe(update.probe)
            config = await control.apply(update, probe_bytes)
        except (ProbeFetchError, SettingsRefused) as error:
            raise HTTPException(422, str(error)) from None
        metrics.record_config(config)
        return config

    @app.get(f"{ADMIN_PREFIX}/stats", response_model=StatsView, response_model_by_alias=True)
    async def get_stats(_: None = Depends(authorised)) -> StatsView:
        return await control.stats()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    return app
