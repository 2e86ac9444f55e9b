"""Two or more operator replicas, one acting: kopf's peering, and the resync loop kept to it.

Every replica runs with the same peering name (``trail operator run --peering NAME``) and
a priority by seniority (:func:`seniority`). kopf keeps each replica's keep-alive (priority, lastseen, lifetime) in
the status of a ``ClusterKopfPeering`` (all namespaces) or of a ``KopfPeering`` in each
watched namespace, and pauses every replica that sees a live peer of higher or equal
priority: only the highest acts. A replica that stops gracefully removes its entry
and a standby takes over at once; one that is killed is dead once its lifetime
(``LIFETIME_SECONDS``) has passed without a keep-alive. The earlier a replica joined, the
higher its priority: the leader is the oldest live replica, so a replica that restarts
or is replaced joins as a standby and never takes the lead from the one acting (with
random priorities it would half the time: a second handover, and a race with the
standby that is taking over from a killed leader).

kopf pauses only what it runs: its handlers. The resync loop is the operator's own task
(see handlers), so before it starts passes it asks :func:`leads` of the same peering
objects, by kopf's rule; a paused replica's loop then starts none.
"""

from __future__ import annotations

import datetime
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient

from trail_operator import kube

LIFETIME_SECONDS = 15  # a killed leader is replaced within this (kopf's default: 60)
SENIORITY_END = 1 << 33  # seconds since 1970 (the year 2242): priorities stay positive
TIE_BITS = 20  # replicas joining in the same second: a random order (a tie pauses both)


@dataclass(frozen=True)
class Peering:
    """This replica in the peering ``name``; ``namespaces`` empty: cluster-wide."""

    name: str
    identity: str
    priority: int
    namespaces: tuple[str, ...] = ()

    @classmethod
    def join(cls, name: str, namespaces: tuple[str, ...] = ()) -> Peering:
        identity = f"{socket.gethostname()}/{secrets.token_hex(4)}"
        return cls(name, identity, seniority(time.time()), namespaces)

    def objects(self) -> list[dict[str, Any]]:
        """The peering objects kopf keeps the keep-alives in (it does not create them)."""
        if not self.namespaces:
            return [{"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": self.name}}]
        return [
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": self.name, "namespace": ns}}
            for ns in self.namespaces
        ]

    async def ensure(self, client: AsyncClient) -> None:
        """Create the peering objects that do not exist yet (every replica tries; one wins)."""
        for obj in self.objects():
            meta = obj["metadata"]
            if await kube.get(client, obj["kind"], meta.get("namespace"), meta["name"]) is None:
                try:
                    await kube.create(client, obj)
                except kube.KubeError as error:
                    if error.status != 409:  # 409: another replica made it first
                        raise

    async def leads(self, client: AsyncClient, now: datetime.datetime) -> bool:
        """Whether kopf lets this replica act now, read from the peering objects."""
        peers = [
            await kube.get(client, obj["kind"], obj["metadata"].get("namespace"), self.name) for obj in self.objects()
        ]
        return all(leads((peer or {}).get("status") or {}, self.identity, self.priority, now) for peer in peers)


def seniority(joined: float) -> int:
    """The priority of a replica joining at ``joined`` (seconds since 1970): higher the
    earlier, random among those of the same second; below 2**53, exact in any JSON reader."""
    return ((SENIORITY_END - int(joined)) << TIE_BITS) + secrets.randbelow(1 << TIE_BITS)


def leads(status: dict[str, Any], identity: str, priority: int, now: datetime.datetime) -> bool:
    """kopf's rule for one peering object's status: pause while any other live peer has a
    priority at least ours (``now`` is timezone-aware)."""
    for peer, entry in status.items():
        if peer == identity or not isinstance(entry, dict):
            continue
        try:
            seen = datetime.datetime.fromisoformat(entry["lastseen"])
            alive = seen + datetime.timedelta(seconds=int(entry.get("lifetime", 60))) > now
        except (KeyError, TypeError, ValueError):
            continue  # not a keep-alive kopf would count either
        if alive and int(entry.get("priority", 0)) >= priority:
            return False
    return True
