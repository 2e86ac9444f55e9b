"""Live retune: push ``spec.scheduler`` to every ready pod's admin API.

Each pod is read first (``GET /trail/v1/config``) and written only if it differs, so a
resync that finds everything applied sends no PUTs. Network errors and 5xx replies are
retried with exponential backoff; a 4xx reply is the pod refusing the settings (it
keeps its old ones) and is reported, not retried; settings already refused (``refused``,
the remembered reason) are not sent again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from trail_contract.admin_api import ConfigUpdate, ConfigView, GuardLevel
from trail_contract.admin_client import AdminClient, AdminError
from trail_operator.layout import ADMIN_PORT_NAME, CONTAINER_NAME
from trail_operator.scheduler_settings import probe_sha_of, same_settings


@dataclass(frozen=True)
class PodTarget:
    name: str
    ip: str
    admin_port: int


@dataclass(frozen=True)
class PodReport:
    """What one pod runs after a sync attempt."""

    name: str
    ip: str
    synced: bool
    view: dict[str, Any] | None = None  # the pod's ConfigView as the status shows it (camelCase), when it answered
    error: str | None = None
    rejected: bool = False  # the pod answered 4xx to our settings

    def status_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "ip": self.ip, "synced": self.synced}
        if self.view is not None:
            entry.update(generation=self.view.get("generation"), policy=self.view.get("policy"), c=self.view.get("c"))
            probe = self.view.get("probe") or {}
            if probe.get("sha256"):
                entry["probeSha256"] = probe["sha256"]
            if self.view.get("probeFailure"):
                entry["probeFailure"] = self.view["probeFailure"]
            if self.view.get("effectivePolicy") is not None:
                entry.update(effectivePolicy=self.view["effectivePolicy"], effectiveC=self.view["effectiveC"])
            if self.guard is not None:
                # Rounded, and without the pair count that moves with every finish: a resync
                # rewrites the status only when a measure moved.
                entry["predictionGuardState"] = {
                    key: round(value, 2) if isinstance(value, float) else value
                    for key, value in self.guard.items()
                    if value is not None and key != "pairs"
                }
        if self.error:
            entry["message"] = self.error
        return entry

    @property
    def guard(self) -> dict[str, Any] | None:
        """The pod's prediction guard (GuardView, camelCase), when it reports one."""
        return (self.view or {}).get("predictionGuardState")

    @property
    def degradation(self) -> str | None:
        """Why the pod does not order requests as set: a failed probe, or the level its
        prediction guard fell back to; None when it runs as set."""
        if (self.view or {}).get("probeFailure"):
            return "probe-failed"
        level = (self.guard or {}).get("level", GuardLevel.TRUSTING.value)
        return None if level == GuardLevel.TRUSTING.value else level


def ready_targets(pods: list[dict[str, Any]]) -> list[PodTarget]:
    """Ready, not-terminating pods with an IP and a container port named ``admin``."""
    targets = []
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if not ready or meta.get("deletionTimestamp") or not status.get("podIP"):
            continue
        ports = [
            port["containerPort"]
            for container in (pod.get("spec") or {}).get("containers") or []
            if container.get("name") == CONTAINER_NAME
            for port in container.get("ports") or []
            if port.get("name") == ADMIN_PORT_NAME
        ]
        if ports:
            targets.append(PodTarget(meta["name"], status["podIP"], int(ports[0])))
    return sorted(targets, key=lambda t: t.name)


def in_sync(view: ConfigView, desired: ConfigUpdate, expected_sha: str | None) -> bool:
    return (
        view.generation == desired.generation
        and same_settings(view, desired)
        and (expected_sha is None or probe_sha_of(view) == expected_sha)
    )


def _shown(view: ConfigView) -> dict[str, Any]:
    """A pod's view as its report, and so the status, carries it."""
    return view.model_dump(mode="json", by_alias=True)


class RetuneClient:
    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        attempts: int = 4,
        base_delay: float = 0.25,
        timeout: float = 10.0,
        put_timeout: float = 120.0,
    ) -> None:
        self._client = client or httpx.AsyncClient(timeout=timeout)  # one connection pool for every pod
        self.attempts = attempts
        self.base_delay = base_delay
        self.put_timeout = put_timeout  # a new probe may be downloaded and validated

    async def aclose(self) -> None:
        await self._client.aclose()

    async def sync_pod(
        self,
        target: PodTarget,
        token: str,
        desired: ConfigUpdate,
        expected_sha: str | None,
        refused: str | None = None,
    ) -> PodReport:
        admin = AdminClient(
            f"http://{target.ip}:{target.admin_port}",
            token,
            client=self._client,
            attempts=self.attempts,
            base_delay=self.base_delay,
        )
        report = {"name": target.name, "ip": target.ip}
        try:
            try:
                view = await admin.config()
            except AdminError as error:
                return PodReport(**report, synced=False, error=f"GET config: {error}" if error.refused else str(error))
            if in_sync(view, desired, expected_sha):
                return PodReport(**report, synced=True, view=_shown(view))
            if refused is not None:
                return PodReport(**report, synced=False, view=_shown(view), rejected=True, error=refused)
            runs_probe = expected_sha is not None and probe_sha_of(view) == expected_sha  # not sent again
            body = desired.model_dump(
                mode="json", by_alias=True, exclude_unset=True, exclude={"probe"} if runs_probe else None
            )
            try:
                applied = await admin.update(body, timeout=self.put_timeout)
            except AdminError as error:
                if not error.refused:
                    return PodReport(**report, synced=False, error=str(error))
                return PodReport(
                    **report,
                    synced=False,
                    view=_shown(view),
                    rejected=True,
                    error=f"pod refused the settings (HTTP {error.status}): {error.detail}",
                )
            synced = in_sync(applied, desired, expected_sha)
            return PodReport(
                **report,
                synced=synced,
                view=_shown(applied),
                error=None if synced else "pod accepted the settings but reports different ones",
            )
        except ValueError as error:  # a reply that is not a ConfigView
            return PodReport(**report, synced=False, error=f"unexpected admin API reply: {error}")

    async def sync_all(
        self,
        targets: list[PodTarget],
        token: str,
        desired: ConfigUpdate,
        expected_sha: str | None,
        refused: str | None = None,
    ) -> list[PodReport]:
        pods = (self.sync_pod(t, token, desired, expected_sha, refused) for t in targets)
        return list(await asyncio.gather(*pods))
