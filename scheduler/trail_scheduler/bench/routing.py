"""Routing over replicas: what sits in front of several pods and picks one per request.

The bench's routing comparison sends one workload through replicas of ``trail serve``
picked three ways: in turn (a plain Service's round robin), by the fewest requests in
flight (a queue-depth load balancer), and by the least predicted drain time (each pod's
``predicted_drain_seconds``, the signal an endpoint picker scoring on TRAIL reads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from trail_contract.admin_client import AdminClient
from trail_scheduler.bench.servers import Server
from trail_scheduler.bench.workload import BenchRequest


@dataclass(frozen=True)
class Replica:
    """A replica as a router sees it when a request arrives."""

    in_flight: int  # requests this router sent it that have not ended
    backlog_tokens: float = 0.0  # the pod's predicted remaining output tokens
    drain_seconds: float | None = None  # that backlog over its measured rate (None: none measured yet)


def round_robin(replicas: Sequence[Replica], turn: int) -> int:
    return turn % len(replicas)


def _first_lowest(replicas: Sequence[Replica], turn: int, key: Callable[[Replica], tuple]) -> int:
    """The replica with the lowest ``key``; ties taken in turn, so idle replicas share the work."""
    count = len(replicas)
    return min(range(count), key=lambda i: (*key(replicas[i]), (i - turn) % count))


def fewest_in_flight(replicas: Sequence[Replica], turn: int) -> int:
    return _first_lowest(replicas, turn, lambda r: (r.in_flight,))


def least_drain(replicas: Sequence[Replica], turn: int) -> int:
    """The replica that would finish its predicted work first: by drain time once every replica
    has measured its rate, by predicted backlog tokens before (replicas alike in speed)."""
    if all(r.drain_seconds is not None for r in replicas):
        return _first_lowest(replicas, turn, lambda r: (r.drain_seconds, r.in_flight))
    return _first_lowest(replicas, turn, lambda r: (r.backlog_tokens, r.in_flight))


RULES: dict[str, Callable[[Sequence[Replica], int], int]] = {
    "round-robin": round_robin,
    "fewest-in-flight": fewest_in_flight,
    "least-drain": least_drain,
}
READS_STATS = {"least-drain"}  # the rules that ask every pod for its backlog per request


class Router:
    """A :class:`~trail_scheduler.bench.loadgen.Route` over ``servers`` by one of :data:`RULES`.

    One choice at a time: a request sent a moment ago is in the next choice's in-flight count
    (a pod shows it in its backlog only once its engine took it in)."""

    def __init__(self, rule: str, servers: Sequence[Server]) -> None:
        self.rule, self._choose = rule, RULES[rule]
        self._servers = list(servers)
        self._index = {server.base: i for i, server in enumerate(self._servers)}
        self._in_flight = [0] * len(self._servers)
        self._turn = 0
        self._lock = asyncio.Lock()
        self._admins: list[AdminClient] = []

    async def __aenter__(self) -> Router:
        if self.rule in READS_STATS:
            self._admins = [server.admin_client(timeout=10) for server in self._servers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for admin in self._admins:
            await admin.aclose()

    async def choose(self, request: BenchRequest) -> str:
        async with self._lock:
            if self._admins:
                stats = await asyncio.gather(*(admin.stats() for admin in self._admins))
                replicas = [
                    Replica(n, s.predicted_backlog_tokens, s.predicted_drain_seconds)
                    for n, s in zip(self._in_flight, stats, strict=True)
                ]
            else:
                replicas = [Replica(n) for n in self._in_flight]
            index = self._choose(replicas, self._turn)
            self._turn += 1
            self._in_flight[index] += 1
            return self._servers[index].base

    def finished(self, base: str) -> None:
        self._in_flight[self._index[base]] -= 1
