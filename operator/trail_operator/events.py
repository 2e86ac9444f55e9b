"""The Normal Kubernetes events a reconcile pass posts on its LLMServer, decided purely
from what the pass wrote and saw, so ``kubectl describe llms`` tells the lifecycle:
created, scaled, retuned, ready. Warnings come from kopf (its log lines at WARNING and
above). These are written by the pass itself, not with ``kopf.event``: kopf's event
queue exists only inside its handlers, and the resync loop's passes run outside them.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any

from trail_operator.apply import Write
from trail_operator.retune import PodReport


def _ready(status: dict[str, Any] | None) -> bool:
    conditions = (status or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def lifecycle_events(
    writes: list[Write],
    live_deployment: dict[str, Any] | None,
    desired_replicas: int,
    settings_generation: int,
    reports: list[PodReport],
    old_status: dict[str, Any] | None,
    new_status: dict[str, Any],
) -> list[tuple[str, str]]:
    """(reason, message) of each event, in the order things happened in the pass."""
    events = []
    written = {write.kind: write.verb for write in writes}
    if written.get("Deployment") == "create":
        made = ", ".join(write.kind for write in writes if write.verb == "create")
        events.append(("Created", f"created {made}"))
    elif written.get("Deployment") == "patch":
        before = ((live_deployment or {}).get("spec") or {}).get("replicas")
        if before is not None and before != desired_replicas:
            events.append(("Scaled", f"Deployment scaled from {before} to {desired_replicas} replicas"))
    if written.get("ConfigMap") == "patch":
        synced = sum(1 for report in reports if report.synced)
        message = f"scheduler settings generation {settings_generation}: {synced}/{len(reports)} ready pods run them"
        events.append(("Retuned", message))
    if _ready(new_status) and not _ready(old_status):
        ready = new_status.get("readyReplicas", 0)
        events.append(("Ready", f"{ready}/{desired_replicas} replicas ready"))
    return events


def build_event(server: dict[str, Any], reason: str, message: str, now: datetime.datetime) -> dict[str, Any]:
    """A core/v1 Normal Event about the LLMServer ``server``, named as kubectl names them."""
    meta = server["metadata"]
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": server["apiVersion"],
            "kind": server["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": "Normal",
        "reason": reason,
        "message": message,
        "source": {"component": "trail-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
