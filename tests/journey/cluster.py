"""A cluster for the journey: the emulated API server and the node stand-in, in a background
thread, driven with the real ``kubectl`` and ``helm`` as a user drives a cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from apiserver import ApiServer, make_ca, serve
from node import GATEWAY, Node

BIN = Path(sys.executable).parent
NODE_ROOT = Path("/var/lib/trail-journey")
API_PORT = 6443


for noisy in ("httpx", "aiohttp.access"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="journey-", dir=workdir))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="journey-cluster", daemon=True)
        self.thread.start()
        self.ca, key = make_ca(workdir, GATEWAY)
        self.url = f"https://{GATEWAY}:{API_PORT}"
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "journey",
                    "clusters": [
                        {"name": "journey", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}
                    ],
                    "users": [{"name": "user", "user": {"token": "journey-user"}}],
                    "contexts": [
                        {"name": "journey", "context": {"cluster": "journey", "user": "user", "namespace": "default"}}
                    ],
                }
            )
        )
        self.api = ApiServer()
        self.api.resources.load_bundled()
        self.node: Node | None = None
        self._stack = self.call(self._start(key))

    async def _start(self, key: Path) -> tuple[Any, ...]:
        await self.api.__aenter__()
        # Pod folders live where a kubelet keeps them, outside /tmp: a pod may mount over /tmp.
        shutil.rmtree(NODE_ROOT, ignore_errors=True)  # the last run's pods (kept to read their logs)
        NODE_ROOT.mkdir(parents=True)
        self.node = Node(self.url, API_PORT, self.ca, Path(tempfile.mkdtemp(prefix="journey-", dir=NODE_ROOT)))
        runner = await serve(self.api, GATEWAY, API_PORT, self.ca, key)
        task = asyncio.create_task(self.node.run())
        return runner, task

    def call(self, coroutine: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        runner, task = self._stack

        async def stop() -> None:
            task.cancel()
            await self.node.close()
            await runner.cleanup()
            await self.api.__aexit__(None, None, None)

        self.call(stop(), timeout=180)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- the user's tools ------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # The discovery cache is this cluster's own: an earlier run at the same address is another cluster.
        result = subprocess.run(
            [str(BIN / "kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.workdir / "kube-cache")},
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        items = self.get("pods", "-n", namespace, "-l", f"trail.dev/llmserver={name}")["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def running(self, pod: dict[str, Any]):
        """The node's record of a Pod object (its processes, logs, IP)."""
        return self.node.pods[pod["metadata"]["uid"]]


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll until ``check`` returns something truthy; fail saying what was awaited and the last error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, KeyError, IndexError, TypeError, StopIteration) as error:
            last = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last error: {last!r}")
