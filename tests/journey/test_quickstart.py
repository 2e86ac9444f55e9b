"""The README's Kubernetes quickstart, step by step, as a user runs it.

Real everywhere but the API server: ``helm`` renders the chart, ``kubectl`` applies and
edits, the operator runs as its Deployment says (``trail operator run`` in its own pod,
in-cluster credentials over TLS), and every server pod is ``trail serve`` started from
exactly the command, env and volumes the operator wrote (tests/journey/node.py). Each step
prints its timing; the closing summary is what docs/kubernetes.md records.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cluster import BIN, Cluster, eventually
from node import GATEWAY

from tests.streaming import Streamed, stream_completion
from trail_contract.admin_api import ConfigView
from trail_scheduler.bench.servers import Server

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llmserver-cpu-smollm2.yaml"
NAME = "smollm2"
START_S = 400  # an engine start on 2 busy cores, plus the startup probe's period

pytestmark = [pytest.mark.engine, pytest.mark.journey, pytest.mark.timeout(1800)]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the node stand-in needs root (network and mount namespaces), as a kubelet does")
    cluster = Cluster(Path(os.environ.get("TMPDIR", "/tmp")))
    try:
        yield cluster
    finally:
        cluster.close()
        print("\njourney timings: " + json.dumps({k: round(v, 2) for k, v in TIMINGS.items()}))


def condition(obj: dict, type_: str) -> dict:
    return next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_)


def server(cluster: Cluster, name: str = NAME) -> dict:
    return cluster.get("llms", name)


def admin_token(cluster: Cluster, name: str = NAME) -> str:
    return base64.b64decode(cluster.get("secret", f"{name}-admin")["data"]["token"]).decode()


def pod_config(cluster: Cluster, pod: dict, token: str) -> ConfigView:
    ip = pod["status"]["podIP"]
    return Server(f"http://{ip}:8000", f"http://{ip}:8001", token).config()


def chat(pod: dict, content: str, max_tokens: int = 24) -> str:
    reply = httpx.post(
        f"http://{pod['status']['podIP']}:8000/v1/chat/completions",
        timeout=120,
        json={"model": NAME, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]},
    )
    reply.raise_for_status()
    return reply.json()["choices"][0]["message"]["content"]


def stream(pod: dict, content: str, max_tokens: int) -> Streamed:
    """A streamed chat completion through the pod."""
    body = {
        "model": NAME,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": content}],
    }
    return stream_completion(f"http://{pod['status']['podIP']}:8000/v1/chat/completions", body)


def ready_pods(cluster: Cluster, count: int, name: str = NAME) -> list[dict]:
    def check():
        pods = cluster.pods(name)
        ready = [p for p in pods if condition(p, "Ready")["status"] == "True"]
        return ready if len(ready) == count == len(pods) else None

    return eventually(check, START_S, f"{count} ready pod(s) of {name}")


def pods_report(cluster: Cluster, c: float, count: int, name: str = NAME) -> list[dict]:
    def check():
        entries = server(cluster, name)["status"].get("pods") or []
        return entries if len(entries) == count and all(e.get("c") == c and e["synced"] for e in entries) else None

    return eventually(check, 60, f"status.pods reporting c={c} on {count} pod(s)", interval=0.2)


def node_runs_exactly_the_api_pods(cluster) -> bool:
    """The node has stopped every pod the API server no longer has (the operator's replicas included)."""
    api = {
        p["metadata"]["uid"]
        for namespace in ("default", "trail-system")
        for p in cluster.get("pods", "-n", namespace)["items"]
        if not p["metadata"].get("deletionTimestamp")
    }
    return set(cluster.node.pods) == api


def test_quickstart(cluster: Cluster, tmp_path: Path) -> None:
    # 1. helm install: render the chart with the real helm, apply it with the real kubectl.
    #    (helm cannot install into the emulated API server itself: it needs its release
    #    Secrets and server-side dry runs; `helm template --include-crds` + `kubectl apply` applies
    #    the same objects, CRD first.)
    rendered = subprocess.run(
        [
            str(BIN / "helm"),
            "template",
            "trail-operator",
            str(REPO / "charts" / "trail-operator"),
            "--namespace",
            "trail-system",
            "--include-crds",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "chart.yaml").write_text(rendered)
    cluster.kubectl("apply", "--validate=false", "-f", str(tmp_path / "chart.yaml"))
    operator = eventually(
        lambda: [
            p for p in cluster.get("pods", "-n", "trail-system")["items"] if condition(p, "Ready")["status"] == "True"
        ],
        120,
        "the operator pod Ready",
    )[0]

    # 2. kubectl apply -f examples/llmserver-cpu-smollm2.yaml, then wait for READY.
    started = time.monotonic()
    cluster.kubectl("apply", "--validate=false", "-f", str(EXAMPLE))
    eventually(lambda: condition(server(cluster), "Ready")["status"] == "True", START_S, "LLMServer Ready")
    TIMINGS["apply_to_ready_s"] = time.monotonic() - started
    [pod] = ready_pods(cluster, 1)
    status = server(cluster)["status"]
    assert status["readyReplicas"] == 1 and condition(server(cluster), "SchedulerSynced")["status"] == "True"
    token = admin_token(cluster)
    assert pod_config(cluster, pod, token).c == 0.8
    budget = cluster.get("poddisruptionbudget", NAME)  # drains take one ready pod at a time
    assert (
        budget["spec"]["maxUnavailable"] == 1
        and budget["spec"]["selector"] == cluster.get("deployment", NAME)["spec"]["selector"]
    )

    # 3. A chat completion through the pod (port-forward needs a real API server's streams).
    assert chat(pod, "Give three tips for staying healthy.").strip()

    # 4. kubectl patch c while streams run: every pod reports it, same process, nothing lost.
    runtime = cluster.running(pod)
    pid = runtime.container("server").process.pid
    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, pod, f"Count to {n} slowly.", 96) for n in (50, 60, 70)]
        time.sleep(2)
        started = time.monotonic()
        cluster.kubectl("patch", "llms", NAME, "--type", "merge", "-p", '{"spec":{"scheduler":{"c":0.5}}}')
        eventually(lambda: pod_config(cluster, pod, token).c == 0.5, 60, "the pod's own config c=0.5", interval=0.2)
        TIMINGS["edit_to_pod_config_s"] = time.monotonic() - started
        pods_report(cluster, 0.5, 1)
        TIMINGS["edit_to_status_s"] = time.monotonic() - started
        results = [future.result() for future in streams]
    assert all(done.tokens == 96 and done.finish == "length" for done in results), results
    assert runtime.container("server").process.pid == pid and runtime.container("server").restarts == 0
    # Applied live, not by a restart. (On 2 cores with three streams, the operator's API
    # round-trips to the in-process emulator dominate: 6.3 s measured; see docs/kubernetes.md.)
    assert TIMINGS["edit_to_pod_config_s"] <= 30.0, TIMINGS
    generation = pod_config(cluster, pod, token).generation

    # 5. Kill the server process: the container restarts with the current settings.
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: cluster.running(pod).container("server").restarts == 1, 60, "a container restart")
    [pod] = ready_pods(cluster, 1)
    TIMINGS["kill_to_ready_s"] = time.monotonic() - started
    config = pod_config(cluster, pod, token)
    assert (config.c, config.generation) == (0.5, generation)
    assert pods_report(cluster, 0.5, 1)[0]["generation"] == generation

    # 6. Restart the operator: nothing changes, nothing is lost.
    # (The Deployment's status is the node's to write: compare what the operator owns.)
    deployment = cluster.get("deployment", NAME)
    configmap_version = cluster.get("configmap", f"{NAME}-scheduler")["metadata"]["resourceVersion"]
    cluster.kubectl("delete", "pod", "-n", "trail-system", operator["metadata"]["name"])
    eventually(
        lambda: [
            p
            for p in cluster.get("pods", "-n", "trail-system")["items"]
            if p["metadata"]["uid"] != operator["metadata"]["uid"] and condition(p, "Ready")["status"] == "True"
        ],
        120,
        "a new operator pod Ready",
    )
    time.sleep(3)  # its first reconcile
    after = cluster.get("deployment", NAME)
    assert (after["metadata"]["generation"], after["spec"]) == (
        deployment["metadata"]["generation"],
        deployment["spec"],
    )
    assert cluster.get("configmap", f"{NAME}-scheduler")["metadata"]["resourceVersion"] == configmap_version
    [same] = cluster.pods(NAME)
    assert same["metadata"]["uid"] == pod["metadata"]["uid"] and cluster.running(same).container("server").restarts == 1
    assert pod_config(cluster, same, token).generation == generation

    # 7. Scale 1 → 2 → 1 through the scale subresource, as an autoscaler does: the operator
    #    follows it and leaves spec.replicas as the autoscaler set it.
    started = time.monotonic()
    cluster.kubectl("scale", "llms", NAME, "--replicas=2")
    pods = ready_pods(cluster, 2)
    TIMINGS["scale_up_to_ready_s"] = time.monotonic() - started
    assert server(cluster)["spec"]["replicas"] == 2 and cluster.get("deployment", NAME)["spec"]["replicas"] == 2
    for entry in pods_report(cluster, 0.5, 2):
        assert entry["generation"] == generation
    new = next(p for p in pods if p["metadata"]["uid"] != pod["metadata"]["uid"])
    assert pod_config(cluster, new, token).c == 0.5 and chat(new, "Name a colour.").strip()
    cluster.kubectl("scale", "llms", NAME, "--replicas=1")
    eventually(
        lambda: len(cluster.pods(NAME)) == 1 and node_runs_exactly_the_api_pods(cluster), 120, "scaled back to 1"
    )

    # 8. A probe the pods refuse: Degraded with the pod's message, and the pod keeps serving.
    # (A manifest, not `kubectl create configmap --from-file`: kubectl sends typed objects as
    # protobuf, which the emulator cannot read.)
    cluster.kubectl(
        "apply",
        "--validate=false",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "wrong-probe"},
                "binaryData": {"probe.safetensors": base64.b64encode(probe_for_hidden_size(64)).decode()},
            }
        ),
    )
    cluster.kubectl(
        "patch",
        "llms",
        NAME,
        "--type",
        "merge",
        "-p",
        '{"spec":{"scheduler":{"probe":{"configMapKeyRef":{"name":"wrong-probe","key":"probe.safetensors"}}}}}',
    )
    degraded = eventually(
        lambda: (d := condition(server(cluster), "Degraded"))["reason"] == "SettingsRejected" and d,
        60,
        "Degraded/SettingsRejected",
    )
    assert "hidden size 64" in degraded["message"], degraded
    [pod] = cluster.pods(NAME)
    assert pod_config(cluster, pod, token).probe.sha256 != ""
    assert chat(pod, "Say hello.").strip()
    cluster.kubectl("patch", "llms", NAME, "--type", "merge", "-p", '{"spec":{"scheduler":{"probe":null}}}')
    eventually(lambda: condition(server(cluster), "Degraded")["status"] == "False", 60, "Degraded cleared")

    # 9. Delete the LLMServer: everything it owned is gone, its processes too.
    cluster.kubectl("delete", "llms", NAME, "--timeout=120s")
    for kind, name in (
        ("deployment", NAME),
        ("service", NAME),
        ("configmap", f"{NAME}-scheduler"),
        ("secret", f"{NAME}-admin"),
        ("poddisruptionbudget", NAME),
    ):
        eventually(lambda: cluster.kubectl("get", kind, name, check=False).returncode != 0, 30, f"{kind} deleted")
    eventually(lambda: not cluster.pods(NAME) and node_runs_exactly_the_api_pods(cluster), 120, "server pods stopped")


def probe_for_hidden_size(hidden_size: int) -> bytes:
    import tempfile

    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.safetensors"
        save_probe(LengthProbe(hidden_size, 10), LengthBins.uniform(), path, model="other", layer=10, training={})
        return path.read_bytes()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """A loopback-range HTTP server (on the pod network's gateway) with a tar of the bundled checkpoint."""
    from trail_scheduler.assets import prepare_bundled_model

    folder = tmp_path_factory.mktemp("models")
    with tarfile.open(folder / "smollm2.tar", "w") as tar:
        tar.add(prepare_bundled_model(), arcname=".")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer((GATEWAY, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://{GATEWAY}:{httpd.server_address[1]}"
    httpd.shutdown()


def url_server(name: str, url: str) -> str:
    return json.dumps(
        {
            "apiVersion": "trail.dev/v1alpha1",
            "kind": "LLMServer",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "model": {"url": {"url": url}, "servedModelName": NAME},
                "engine": {"maxModelLen": 2048, "dtype": "float32", "extraArgs": ["--enforce-eager"]},
                "resources": {"gpus": 0},
                "scheduler": {"policy": "trail", "c": 0.8},
            },
        }
    )


def test_model_url(cluster: Cluster, model_server: str) -> None:
    """model.url: the init container downloads the checkpoint; a broken URL is reported, nothing half-written."""
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=url_server("broken", f"{model_server}/missing.tar"))
    failed = eventually(
        lambda: [
            s
            for p in cluster.pods("broken")
            for s in p["status"].get("initContainerStatuses") or []
            if "terminated" in s.get("lastState", {})
        ],
        START_S,
        "the init container failing",
    )[0]
    message = failed["lastState"]["terminated"].get("message", "")
    assert "404" in message and "missing.tar" in message, failed
    [broken] = cluster.pods("broken")
    assert condition(broken, "Ready")["status"] == "False"
    models = cluster.running(broken).dir / "volumes" / "model"
    assert not any(models.iterdir()), sorted(models.iterdir())  # nothing half-written for the server to use
    cluster.kubectl("delete", "llms", "broken", "--timeout=120s")

    started = time.monotonic()
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=url_server("fetched", f"{model_server}/smollm2.tar"))
    eventually(lambda: condition(server(cluster, "fetched"), "Ready")["status"] == "True", START_S, "Ready")
    TIMINGS["model_url_apply_to_ready_s"] = time.monotonic() - started
    [pod] = cluster.pods("fetched")
    assert chat(pod, "Give three tips for staying healthy.").strip()
    cluster.kubectl("delete", "llms", "fetched", "--timeout=120s")
