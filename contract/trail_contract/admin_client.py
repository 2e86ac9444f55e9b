"""A pod's admin API seen from outside: the one client the operator, the bench and the tests use.

Typed by the contract (:mod:`trail_contract.admin_api`) and built on httpx alone, so the
operator imports it without the engine stack. Network errors and 5xx replies are
retried with exponential backoff when ``attempts`` > 1 (the operator's live retune);
any other reply that is not 200 is final: a 4xx is the pod refusing the request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from trail_contract.admin_api import ADMIN_PREFIX, ConfigUpdate, ConfigView, StatsView


class AdminError(Exception):
    """The pod answered other than 200, or could not be reached (``status`` is the last HTTP
    status seen, None when no reply came); ``detail`` is the server's own reason."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.detail = status, detail

    @property
    def refused(self) -> bool:
        """The pod answered and refused (4xx): it keeps what it had, and asking again will not help."""
        return self.status is not None and 400 <= self.status < 500


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail") or response.text)
    except (ValueError, AttributeError):
        return response.text or f"HTTP {response.status_code}"


class AdminClient:
    """``GET/PUT /config`` and ``GET /stats`` of one pod, by its admin base URL (``http://host:port``).

    ``client`` may be shared between pods (the operator's); a client made here is closed by
    :meth:`aclose` or by leaving ``async with``.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 60.0,
        attempts: int = 1,
        base_delay: float = 0.25,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}{ADMIN_PREFIX}"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._own = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self.attempts, self.base_delay = attempts, base_delay

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def config(self) -> ConfigView:
        return ConfigView.model_validate(await self._request("GET", "/config"))

    async def update(self, update: ConfigUpdate | dict[str, Any], timeout: float | None = None) -> ConfigView:
        """Apply settings (and a generation, a probe); the reply is what the pod now runs.

        A dict goes as given (camelCase), so the pod's own validation is what answers.
        ``timeout`` allows for a new probe being downloaded and validated.
        """
        body = update if isinstance(update, dict) else update.model_dump(mode="json", by_alias=True, exclude_unset=True)
        extra = {} if timeout is None else {"timeout": timeout}
        return ConfigView.model_validate(await self._request("PUT", "/config", json=body, **extra))

    async def stats(self) -> StatsView:
        return StatsView.model_validate(await self._request("GET", "/stats"))

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        last, status, detail = "", None, ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.base_delay * 2 ** (attempt - 1))
            try:
                response = await self._client.request(method, self.url + path, headers=self._headers, **kwargs)
            except httpx.HTTPError as error:
                last = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                continue
            status = response.status_code
            if status == 200:
                return response.json()
            detail = _detail(response)
            if status < 500:
                raise AdminError(f"HTTP {status}: {detail}", status, detail)
            last = f"HTTP {status}: {detail}"
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        raise AdminError(f"admin API unreachable{tries} ({last})", status, detail)
