"""The README's Kubernetes quickstart, step by step, as a user runs it.

Real everywhere but the API server: ``helm`` renders the chart, ``kubectl`` applies and
edits, the operator runs as its Deployment says (``trail operator run`` in its own pod,
in-cluster credentials over TLS), and every server pod is ``trail serve`` started from
exactly the command, env and volumes the operator wrote (tests/journey/node.py). Each step
prints its timing; the closing summary is what docs/kubernetes.md records. The tests run in
order on one cluster, each on what the one before left (the chart installed, the
quickstart's LLMServer).
"""

from __future__ import annotations

import base64
import datetime
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
from trail_operator.fetch_model import LOCK
from trail_scheduler.bench.servers import Server

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "llmserver-cpu-smollm2.yaml"
NAME = "smollm2"
START_S = 400  # an engine start on 2 busy cores, plus the startup probe's period
ROUTING_ON = '{"spec":{"routing":{"inferencePool":{"enabled":true}}}}'
PEERING = "trail-operator"  # the chart's kopf peering: the release's full name
TAKEOVER_S = 30.0  # a killed operator replica's keep-alive lapses in 15 s (trail_operator.peering)
# The Gateway API Inference Extension's CRD, which users install from its release manifests;
# the schema is left open here (the emulated API server checks no schema).
INFERENCE_POOL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferencepools.inference.networking.k8s.io"},
    "spec": {
        "group": "inference.networking.k8s.io",
        "scope": "Namespaced",
        "names": {"kind": "InferencePool", "plural": "inferencepools", "singular": "inferencepool"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}

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


BACKLOG = ("trail_predicted_backlog_tokens", "trail_predicted_drain_seconds")


def backlog(pod: dict) -> dict[str, float]:
    """The pod's predicted work left, from its /metrics (what an autoscaler or endpoint picker reads)."""
    text = httpx.get(f"http://{pod['status']['podIP']}:8000/metrics", timeout=30).text
    lines = (line.partition(" ") for line in text.splitlines())
    return {name: float(value) for name, _, value in lines if name in BACKLOG}


def busy_backlogs(pods: list[dict], streams: list) -> list[list[dict[str, float]]]:
    """Each pod's backlog, read every second until ``streams`` (futures) are done."""
    samples: list[list[dict[str, float]]] = [[] for _ in pods]
    while not all(stream.done() for stream in streams):
        for pod, seen in zip(pods, samples, strict=True):
            seen.append(backlog(pod))
        time.sleep(1.0)  # the pods refresh it every second
    return samples


def backlog_rose_and_fell(pod: dict, samples: list[dict[str, float]]) -> None:
    """While requests ran the pod predicted work left, tokens and (once it had measured a rate)
    seconds; once they finished, none."""
    assert any(s["trail_predicted_backlog_tokens"] > 0 and s["trail_predicted_drain_seconds"] > 0 for s in samples), (
        samples
    )
    eventually(lambda: backlog(pod) == dict.fromkeys(BACKLOG, 0.0), 10, "the backlog back to 0")


def operator_pods(cluster: Cluster) -> list[dict]:
    return [p for p in cluster.get("pods", "-n", "trail-system")["items"] if condition(p, "Ready")["status"] == "True"]


def operator_peers(cluster: Cluster) -> dict[str, dict]:
    """The operator replicas alive in the chart's peering, by kopf identity (``POD/suffix``:
    a pod's hostname is its name)."""
    now = datetime.datetime.now(datetime.UTC)
    status = cluster.get("clusterkopfpeering", PEERING).get("status") or {}
    return {
        identity: entry
        for identity, entry in status.items()
        if entry
        and datetime.datetime.fromisoformat(entry["lastseen"]) + datetime.timedelta(seconds=entry["lifetime"]) > now
    }


def operator_leader(cluster: Cluster) -> str:
    """The identity of the replica that acts: kopf's highest priority."""
    peers = operator_peers(cluster)
    return max(peers, key=lambda identity: peers[identity]["priority"])


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
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(INFERENCE_POOL_CRD))
    eventually(lambda: operator_pods(cluster), 120, "an operator pod Ready")

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
        samples = pool.submit(busy_backlogs, [pod], streams)
        time.sleep(2)
        started = time.monotonic()
        cluster.kubectl("patch", "llms", NAME, "--type", "merge", "-p", '{"spec":{"scheduler":{"c":0.5}}}')
        eventually(lambda: pod_config(cluster, pod, token).c == 0.5, 60, "the pod's own config c=0.5", interval=0.2)
        TIMINGS["edit_to_pod_config_s"] = time.monotonic() - started
        pods_report(cluster, 0.5, 1)
        TIMINGS["edit_to_status_s"] = time.monotonic() - started
        results = [future.result() for future in streams]
    assert all(done.tokens == 96 and done.finish == "length" for done in results), results
    backlog_rose_and_fell(pod, samples.result()[0])
    assert runtime.container("server").process.pid == pid and runtime.container("server").restarts == 0
    # Applied live, not by a restart. (On 2 cores with three streams, the operator's API
    # round-trips to the in-process emulator dominate: the measured time is in docs/kubernetes.md.)
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


def test_day_two(cluster: Cluster) -> None:
    """The quickstart's LLMServer on: an operator replica killed, a probe the pods refuse, the
    LLMServer deleted."""
    [pod] = ready_pods(cluster, 1)
    token = admin_token(cluster)
    generation = pod_config(cluster, pod, token).generation
    restarts = cluster.running(pod).container("server").restarts

    # 6. Kill the acting operator replica (SIGKILL: no goodbye) and turn the InferencePool on
    #    at once: the standby takes over when the killed one's keep-alive lapses and creates
    #    the pool; nothing else changes, nothing is lost.
    #    (The Deployment's status is the node's to write: compare what the operator owns.)
    operators = eventually(
        lambda: len(operator_peers(cluster)) == 2 and len(ready := operator_pods(cluster)) == 2 and ready,
        120,
        "two operator replicas",
    )
    leader = operator_leader(cluster)
    [killed] = [p for p in operators if p["metadata"]["name"] == leader.split("/")[0]]
    [standby] = [p for p in operators if p is not killed]
    deployment = cluster.get("deployment", NAME)
    configmap_version = cluster.get("configmap", f"{NAME}-scheduler")["metadata"]["resourceVersion"]
    logged = len(cluster.running(standby).logs("operator"))
    started = time.monotonic()
    os.kill(cluster.running(killed).container("operator").process.pid, signal.SIGKILL)
    cluster.kubectl("patch", "llms", NAME, "--type", "merge", "-p", ROUTING_ON)
    pool = eventually(lambda: cluster.get("inferencepool", NAME), 2 * TAKEOVER_S, "the InferencePool")
    TIMINGS["operator_kill_to_takeover_s"] = time.monotonic() - started
    assert TIMINGS["operator_kill_to_takeover_s"] <= TAKEOVER_S, TIMINGS
    assert "Resuming operations" in cluster.running(standby).logs("operator")[logged:]  # kopf's word for it
    assert pool["spec"]["selector"] == deployment["spec"]["selector"]
    assert pool["metadata"]["ownerReferences"][0]["uid"] == server(cluster)["metadata"]["uid"]
    after = cluster.get("deployment", NAME)
    assert (after["metadata"]["generation"], after["spec"]) == (
        deployment["metadata"]["generation"],
        deployment["spec"],
    )
    assert cluster.get("configmap", f"{NAME}-scheduler")["metadata"]["resourceVersion"] == configmap_version
    [same] = cluster.pods(NAME)
    assert same["metadata"]["uid"] == pod["metadata"]["uid"]
    assert cluster.running(same).container("server").restarts == restarts
    assert pod_config(cluster, same, token).generation == generation

    # 7. A probe the pods refuse: Degraded with the pod's message, and the pod keeps serving.
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

    # The killed replica is back (its container restarted) as a standby: the oldest replica leads.
    assert cluster.running(killed).container("operator").restarts == 1
    eventually(lambda: len(operator_peers(cluster)) == 2, 60, "the killed operator replica back in the peering")
    assert operator_leader(cluster).split("/")[0] == standby["metadata"]["name"]

    # 8. Delete the LLMServer: everything it owned is gone, its processes too.
    cluster.kubectl("delete", "llms", NAME, "--timeout=120s")
    for kind, name in (
        ("deployment", NAME),
        ("service", NAME),
        ("configmap", f"{NAME}-scheduler"),
        ("secret", f"{NAME}-admin"),
        ("poddisruptionbudget", NAME),
        ("inferencepool", NAME),
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


class Served(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records every path asked for (how many downloads a model took)."""

    asked: list[str] = []

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self.asked.append(self.path)
        super().do_GET()


@pytest.fixture(scope="module")
def model_server(tmp_path_factory):
    """A loopback-range HTTP server (on the pod network's gateway) with a tar of the bundled
    checkpoint; yields its URL and the paths it was asked for."""
    from trail_scheduler.assets import prepare_bundled_model

    folder = tmp_path_factory.mktemp("models")
    with tarfile.open(folder / "smollm2.tar", "w") as tar:
        tar.add(prepare_bundled_model(), arcname=".")
    handler = functools.partial(Served, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer((GATEWAY, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://{GATEWAY}:{httpd.server_address[1]}", Served.asked
    httpd.shutdown()


def url_server(name: str, url: str, cache: dict | None = None) -> str:
    return json.dumps(
        {
            "apiVersion": "trail.dev/v1alpha1",
            "kind": "LLMServer",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "cache": cache or {},
                "model": {"url": {"url": url}, "servedModelName": NAME},
                "engine": {"maxModelLen": 2048, "dtype": "float32", "extraArgs": ["--enforce-eager"]},
                "resources": {"gpus": 0},
                "scheduler": {"policy": "trail", "c": 0.8},
            },
        }
    )


def test_a_broken_model_url_is_reported(cluster: Cluster, model_server: tuple[str, list[str]]) -> None:
    """model.url pointing at nothing: the init container's failure says why, the server never
    starts, nothing half-written is left for it."""
    url, _ = model_server
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=url_server("broken", f"{url}/missing.tar"))
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
    # Nothing half-written for the server to use: no checkpoint, no mark of a complete one.
    assert [p.name for p in models.iterdir()] == [LOCK], sorted(models.iterdir())
    cluster.kubectl("delete", "llms", "broken", "--timeout=120s")


def test_model_url(cluster: Cluster, model_server: tuple[str, list[str]]) -> None:
    """model.url: the init container downloads the checkpoint. With a cache claim, a replica an
    autoscaler adds (through the scale subresource) serves the first one's download."""
    url, asked = model_server
    started = time.monotonic()
    shared = {"size": "2Gi", "persistentVolumeClaim": {"accessMode": "ReadWriteOnce"}}  # one node here
    cluster.kubectl("apply", "--validate=false", "-f", "-", input=url_server("fetched", f"{url}/smollm2.tar", shared))
    [first] = ready_pods(cluster, 1, "fetched")
    TIMINGS["model_url_apply_to_ready_s"] = time.monotonic() - started

    # An autoscaler's scale-up, through the scale subresource: the new replica finds the
    # checkpoint in the shared cache (one download for both), and the operator leaves
    # spec.replicas as the autoscaler set it.
    started = time.monotonic()
    cluster.kubectl("scale", "llms", "fetched", "--replicas=2")
    pods = ready_pods(cluster, 2, "fetched")
    TIMINGS["scale_up_from_cache_to_ready_s"] = time.monotonic() - started
    assert server(cluster, "fetched")["spec"]["replicas"] == 2
    assert asked.count("/smollm2.tar") == 1, asked
    [added] = [p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"]]
    claim = "/var/cache/trail/models/"
    assert cluster.running(first).logs("fetch-model").startswith(f"fetch-model: {url}/smollm2.tar → {claim}")
    assert cluster.running(added).logs("fetch-model").startswith(f"fetch-model: {claim}")  # "… has <url>"
    owner = cluster.get("persistentvolumeclaim", "fetched-cache")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == server(cluster, "fetched")["metadata"]["uid"]

    # Every pod exports its predicted backlog, moving with its requests. (Long enough answers
    # that a pod publishes it, once a second, while they run, on a fast machine too.)
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(stream, p, "Name the planets.", 192) for p in pods]
        samples = busy_backlogs(pods, streams)
        assert all(done.result().tokens == 192 for done in streams)
    for p, seen in zip(pods, samples, strict=True):
        backlog_rose_and_fell(p, seen)

    # And its scale-down.
    cluster.kubectl("scale", "llms", "fetched", "--replicas=1")
    eventually(
        lambda: len(cluster.pods("fetched")) == 1 and node_runs_exactly_the_api_pods(cluster), 120, "scaled to 1"
    )
    assert server(cluster, "fetched")["spec"]["replicas"] == 1
    assert cluster.get("deployment", "fetched")["spec"]["replicas"] == 1
    scale = eventually(  # what an autoscaler reads back: the replicas and the pods' selector
        lambda: (scale := cluster.get("llms", "fetched", "--subresource=scale"))["status"]["replicas"] == 1 and scale,
        60,
        "the Scale reporting 1 replica",
    )
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "app.kubernetes.io/name=trail-server,trail.dev/llmserver=fetched"
    [pod] = cluster.pods("fetched")
    assert chat(pod, "Give three tips for staying healthy.").strip()
    cluster.kubectl("delete", "llms", "fetched", "--timeout=120s")
    eventually(
        lambda: cluster.kubectl("get", "persistentvolumeclaim", "fetched-cache", check=False).returncode != 0,
        30,
        "the cache claim deleted with its LLMServer",
    )
