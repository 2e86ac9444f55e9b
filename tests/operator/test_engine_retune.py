"""The operator retunes a real `trail serve` process standing in for a pod.

Slow (an engine start on CPU takes ~30-60 s), hence ``engine``. kmock plays the API
server; the Pod object points at the local process (podIP 127.0.0.1, container port
``admin`` = its admin port).
"""

from __future__ import annotations

import time

import pytest
from kopf_harness import LLMS, NS, condition, eventually, obj, running_operator
from test_operator import CPU_SPEC, add_pod, cluster, create, edit_spec  # noqa: F401 (fixture)

from trail_contract.admin_client import AdminClient
from trail_scheduler.bench.servers import start_trail_serve


def _probe_for_hidden_size(hidden_size: int) -> bytes:
    import tempfile
    from pathlib import Path

    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.safetensors"
        save_probe(LengthProbe(hidden_size, 10), LengthBins.uniform(), path, model="other", layer=10, training={})
        return path.read_bytes()


@pytest.fixture
def trail_serve(tmp_path):
    """The process reads its admin token from a file, as a pod reads its mounted Secret."""
    token_file = tmp_path / "token"
    token_file.write_text("not-yet-the-operators")
    server = start_trail_serve(
        tmp_path, "--probe", "none", "--prompt-predictor", "none", "--admin-token-file", str(token_file)
    )
    try:
        yield int(server.admin.rsplit(":", 1)[1]), token_file
    finally:
        server.stop()


@pytest.mark.engine
@pytest.mark.timeout(600)
async def test_edit_c_reaches_a_real_trail_serve(cluster, trail_serve):  # noqa: F811
    admin_port, token_file = trail_serve
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "v1/secrets", "smollm2-admin"), what="admin Secret")
        # What the kubelet does with the mounted Secret: the file now holds the operator's
        # token, and trail serve reads it again (no restart).
        import base64

        secret = obj(cluster, "v1/secrets", "smollm2-admin")
        token = base64.b64decode(secret["data"]["token"]).decode()
        token_file.write_text(token)
        add_pod(cluster, "smollm2", "127.0.0.1", admin_port)
        await cluster.patch(f"/api/v1/namespaces/{NS}/pods/pod-0", json={"metadata": {"labels": {"x": "1"}}})
        await eventually(
            lambda: (condition(cluster, "smollm2", "SchedulerSynced") or {}).get("reason") == "AllPodsSynced",
            timeout=60,
            what="initial sync",
        )

        started = time.monotonic()
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 3.25}}, generation=2)
        await eventually(
            lambda: any(
                p.get("c") == 3.25 and p.get("synced") for p in obj(cluster, LLMS, "smollm2")["status"].get("pods", [])
            ),
            timeout=60,
            what="status reports c=3.25",
        )
        elapsed = time.monotonic() - started

        # A probe the pod refuses (trained for another hidden size): Degraded with the
        # pod's own message, and the pod keeps what it ran.
        cluster.objects["v1/configmaps", NS, "probes"] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "probes", "namespace": NS},
            "binaryData": {"p.bin": base64.b64encode(_probe_for_hidden_size(64)).decode()},
        }
        await edit_spec(
            cluster,
            "smollm2",
            {"scheduler": {"c": 3.25, "probe": {"configMapKeyRef": {"name": "probes", "key": "p.bin"}}}},
            generation=3,
        )
        degraded = await eventually(
            lambda: (d := condition(cluster, "smollm2", "Degraded")) and d["reason"] == "SettingsRejected" and d,
            timeout=60,
            what="Degraded/SettingsRejected",
        )
    assert "hidden size 64" in degraded["message"], degraded
    print(f"\nedit → applied and reported in status: {elapsed:.2f} s")
    async with AdminClient(f"http://127.0.0.1:{admin_port}", token) as admin:
        config = await admin.config()
    assert config.c == 3.25 and config.generation == 2  # the rejected change left no trace
    assert config.probe is None
