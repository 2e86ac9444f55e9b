"""The operator retunes a real `trail serve` process standing in for a pod.

Slow (an engine start on CPU takes ~30-60 s), hence ``engine``. kmock plays the API
server; the Pod object points at the local process (podIP 127.0.0.1, container port
``admin`` = its admin port).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_operator import CPU_SPEC, add_pod, cluster, create, edit_spec, free_port  # noqa: F401 (fixture)
from kopf_harness import LLMS, NS, condition, eventually, obj, running_operator

from trail_scheduler.api import ADMIN_PREFIX

TRAIL = Path(sys.executable).parent / "trail"


@pytest.fixture
def trail_serve(tmp_path):
    http_port, admin_port, token = free_port(), free_port(), "engine-test-token"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [str(TRAIL), "serve", "--port", str(http_port), "--admin-port", str(admin_port),
         "--max-model-len", "2048", "--dtype", "float32", "--gpu-memory-utilization", "0.3", "--enforce-eager"],
        env={**os.environ, "TRAIL_ADMIN_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, f"trail serve exited {process.returncode}: " \
                                           f"{(tmp_path / 'serve.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"trail serve not healthy after 300 s: {(tmp_path / 'serve.log').read_text()[-3000:]}")
        yield admin_port, token
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.engine
@pytest.mark.timeout(600)
async def test_edit_c_reaches_a_real_trail_serve(cluster, trail_serve):  # noqa: F811
    admin_port, token = trail_serve
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "v1/secrets", "smollm2-admin"), what="admin Secret")
        # The pod's token comes from the operator's Secret in a cluster; here the process
        # already runs with its own, so make the Secret hold that one (as the pod would see).
        import base64
        await cluster.patch(f"/api/v1/namespaces/{NS}/secrets/smollm2-admin",
                            json={"data": {"token": base64.b64encode(token.encode()).decode()}})
        add_pod(cluster, "smollm2", "127.0.0.1", admin_port)
        await cluster.patch(f"/api/v1/namespaces/{NS}/pods/pod-0", json={"metadata": {"labels": {"x": "1"}}})
        await eventually(lambda: (condition(cluster, "smollm2", "SchedulerSynced") or {}).get("reason")
                         == "AllPodsSynced", timeout=60, what="initial sync")

        started = time.monotonic()
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 3.25}}, generation=2)
        await eventually(lambda: any(p.get("c") == 3.25 and p.get("synced")
                                     for p in obj(cluster, LLMS, "smollm2")["status"].get("pods", [])),
                         timeout=60, what="status reports c=3.25")
        elapsed = time.monotonic() - started
    print(f"\nedit → applied and reported in status: {elapsed:.2f} s")
    reply = httpx.get(f"http://127.0.0.1:{admin_port}{ADMIN_PREFIX}/config",
                      headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert reply.status_code == 200
    assert reply.json()["c"] == 3.25 and reply.json()["generation"] == 2
    assert condition(cluster, "smollm2", "SchedulerSynced")["status"] == "True"
