"""Engines for benchmarks and engine tests: start, health-check, scrape and stop them.

Two kinds, on identical engine settings: ``trail serve`` (TRAIL's scheduler, any
policy, switched live through the admin API) and stock vLLM's OpenAI server (its own
scheduler, for the "stock FCFS" baseline). The stock command line is derived from
``trail serve``'s own by removing TRAIL's four flags, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import httpx

from trail_contract.admin_api import ConfigView, StatsView
from trail_contract.admin_client import AdminClient
from trail_contract.errors import TrailError

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# vLLM's dev mode adds /reset_prefix_cache (and other admin routes) to the API port: the
# engines started here listen on loopback only, and each measured run starts cold with it.
DEV_MODE = {"VLLM_SERVER_DEV_MODE": "1"}
START_TIMEOUT_S = 300.0
T = TypeVar("T")


class EndpointError(TrailError):
    """An endpoint that cannot be used (not loopback, unreachable, or refusing)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_loopback(url: str) -> str:
    """Benchmarks send load only to this machine; refuse anything else early."""
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS:
        raise EndpointError(f"{url}: benchmarks only drive loopback endpoints (127.0.0.1, localhost, ::1)")
    return url.rstrip("/")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text → {sample name: [(labels, value), …]} (``_total``, ``_sum``, ``_count`` kept)."""
    from prometheus_client.parser import text_string_to_metric_families  # the engine stack's, not the operator's

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric_sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels`` (0 if absent)."""
    return sum(value for found, value in samples.get(name, []) if labels.items() <= found.items())


def metric_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    """How much a counter's matching samples grew between two scrapes."""
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


@dataclass
class Server:
    """A running OpenAI-compatible endpoint; ``admin`` is None for stock vLLM."""

    base: str
    admin: str | None = None
    token: str | None = None
    log: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def admin_client(self, timeout: float = 60.0) -> AdminClient:
        if self.admin is None:
            raise EndpointError(f"{self.base} has no TRAIL admin API (stock vLLM?)")
        return AdminClient(self.admin, self.token, timeout=timeout)

    def _admin(self, call: Callable[[AdminClient], Awaitable[T]]) -> T:
        """One admin call from synchronous code (the bench and the engine tests are)."""

        async def run() -> T:
            async with self.admin_client() as client:
                return await call(client)

        return asyncio.run(run())

    def config(self) -> ConfigView:
        return self._admin(lambda client: client.config())

    def configure(self, **settings) -> ConfigView:
        """PUT the admin API's settings (camelCase fields); AdminError says why the server refused."""
        return self._admin(lambda client: client.update(settings))

    def load_probe(self, path: Path) -> ConfigView:
        return self.configure(probe={"data": base64.b64encode(Path(path).read_bytes()).decode()})

    def stats(self) -> StatsView:
        return self._admin(lambda client: client.stats())

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_metrics(httpx.get(f"{self.base}/metrics", timeout=30).text)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a Prometheus sample from /metrics (0 if absent)."""
        return metric_sum(self.metrics(), name, **labels)

    def reset_prefix_cache(self, attempts: int = 10) -> bool | None:
        """Empty vLLM's prefix cache, so a run does not reuse the prompts an earlier run
        prefilled. None: the endpoint does not offer it (vLLM outside its dev mode)."""
        for _ in range(attempts):
            reply = httpx.post(f"{self.base}/reset_prefix_cache", timeout=30)
            if reply.status_code in (404, 405):
                return None
            reply.raise_for_status()
            if reply.json().get("success"):
                return True
            time.sleep(0.2)  # blocks of requests that just finished are still held
        return False

    def served_model(self) -> str:
        """The first served model name; a clear error if the endpoint does not answer."""
        try:
            reply = httpx.get(f"{self.base}/v1/models", timeout=10)
            reply.raise_for_status()
            return reply.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as error:
            raise EndpointError(f"{self.base} is not a reachable OpenAI-compatible server: {error}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _wait_healthy(process: subprocess.Popen, server: Server, what: str) -> Server:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{server.log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"{what} did not become healthy in {START_TIMEOUT_S:.0f} s:\n{server.log.read_text()[-4000:]}")


def start_trail_serve(
    log_dir: Path, *extra: str, token: str = "bench-token", env: dict[str, str] | None = None
) -> Server:
    """``trail serve`` on free loopback ports; ``extra`` goes to it (and on to vLLM), ``env``
    to its environment.

    It accepts client hints: the benchmark's oracle policy and tests send lengths with requests.
    """
    port, admin_port = free_port(), free_port()
    log = Path(log_dir) / f"trail-serve-{port}.log"
    env = {**os.environ, **DEV_MODE, "TRAIL_ADMIN_TOKEN": token, **(env or {})}
    trail = Path(sys.executable).with_name("trail")
    process = subprocess.Popen(
        [str(trail), "serve", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin_port)]
        + ["--accept-client-hints", *extra],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", token, log, process)
    return _wait_healthy(process, server, "trail serve")


def stock_vllm_argv(port: int, *extra: str) -> list[str]:
    """Stock vLLM's server arguments: exactly what ``trail serve`` would pass, minus TRAIL's flags."""
    from trail_scheduler.server.serve import vllm_argv

    return vllm_argv(None, port, list(extra), None)


def start_stock_vllm(log_dir: Path, *extra: str) -> Server:
    """Stock ``vllm.entrypoints.openai.api_server`` with ``trail serve``'s engine settings."""
    port = free_port()
    log = Path(log_dir) / f"stock-vllm-{port}.log"
    argv = stock_vllm_argv(port, *extra)
    process = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", *argv],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **DEV_MODE, "HF_HUB_OFFLINE": "1"},
    )
    server = Server(f"http://127.0.0.1:{port}", log=log, process=process)
    return _wait_healthy(process, server, "stock vLLM")
