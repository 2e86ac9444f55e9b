"""The operator end to end against kmock's Kubernetes emulation (see kopf_harness)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import socket
import time

import pytest
from aiohttp import web
from conftest import REPO, load
from kopf_harness import (
    LLMS,
    NS,
    condition,
    declare_resources,
    eventually,
    new_server,
    obj,
    operator_reads,
    passes,
    requests_to,
    running_operator,
    write_kubeconfig,
)

from trail_contract.admin_api import ADMIN_PREFIX, ConfigView, GuardView
from trail_operator.peering import Peering, leads, seniority
from trail_operator.rbac import PERMISSIONS

CPU_SPEC = load(REPO / "examples" / "llmserver-cpu-smollm2.yaml")["spec"]


@pytest.fixture
async def cluster(kmock, tmp_path, monkeypatch):
    declare_resources(kmock)
    path = str(write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url)))
    monkeypatch.setenv("KUBECONFIG", path)
    # kubernetes reads $KUBECONFIG once, at import: point its default at ours too.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", path)
    return kmock


async def create(cluster, name, spec, generation=1):
    body = new_server(name, spec, generation)
    response = await cluster.post(f"/apis/trail.dev/v1alpha1/namespaces/{NS}/llmservers", json=body)
    assert response.status == 200, await response.text()
    return body


async def edit_spec(cluster, name, spec_patch, generation):
    """A spec edit as the API server stores it (kmock does not bump generation itself)."""
    response = await cluster.patch(
        f"/apis/trail.dev/v1alpha1/namespaces/{NS}/llmservers/{name}",
        json={"spec": spec_patch, "metadata": {"generation": generation}},
    )
    assert response.status == 200, await response.text()


def obj_at(cluster, resource, name):
    """A cluster-scoped object, or None."""
    try:
        found = cluster.objects[resource, None, name]
    except KeyError:
        return None
    return None if found.deleted else dict(found.raw)


def settings(cluster, name):
    return json.loads(obj(cluster, "v1/configmaps", f"{name}-scheduler")["data"]["scheduler.json"])


def add_pod(cluster, server_name, ip, admin_port, pod_name="pod-0"):
    cluster.objects["v1/pods", NS, pod_name] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": NS,
            "labels": {"app.kubernetes.io/name": "trail-server", "trail.dev/llmserver": server_name},
        },
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "ports": [{"name": "http", "containerPort": 8000}, {"name": "admin", "containerPort": admin_port}],
                }
            ]
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_create_produces_owned_objects_and_status(cluster):
    async with running_operator():
        server = await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await eventually(lambda: condition(cluster, "smollm2", "SchedulerSynced"), what="status")
    uid = server["metadata"]["uid"]
    for resource, name in [
        ("apps/v1/deployments", "smollm2"),
        ("v1/services", "smollm2"),
        ("v1/configmaps", "smollm2-scheduler"),
        ("v1/secrets", "smollm2-admin"),
        ("policy/v1/poddisruptionbudgets", "smollm2"),
    ]:
        owned = obj(cluster, resource, name)
        assert owned is not None, f"{resource} {name} missing"
        assert owned["metadata"]["ownerReferences"][0]["uid"] == uid
        assert owned["metadata"]["labels"]["trail.dev/llmserver"] == "smollm2"
    status = obj(cluster, LLMS, "smollm2")["status"]
    assert status["endpoint"] == "http://smollm2.ml.svc:8000/v1"
    assert status["observedGeneration"] == 1 and status["schedulerGeneration"] == 1
    assert condition(cluster, "smollm2", "Degraded")["status"] == "False"
    assert condition(cluster, "smollm2", "Ready")["status"] == "False"  # no Deployment controller in kmock
    assert condition(cluster, "smollm2", "Progressing")["reason"] == "RollingOut"
    assert condition(cluster, "smollm2", "SchedulerSynced")["reason"] == "NoReadyPods"
    assert settings(cluster, "smollm2")["c"] == 0.8


async def test_ready_follows_the_deployment_status(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await cluster.patch(
            f"/apis/apps/v1/namespaces/{NS}/deployments/smollm2/status",
            json={"status": {"observedGeneration": 0, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}},
        )
        ready = await eventually(
            lambda: (condition(cluster, "smollm2", "Ready") or {}).get("status") == "True", what="Ready=True"
        )
    assert ready
    assert obj(cluster, LLMS, "smollm2")["status"]["readyReplicas"] == 1
    assert condition(cluster, "smollm2", "Progressing")["status"] == "False"


async def test_editing_c_updates_configmap_and_never_the_deployment(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        versions_before = len(cluster.objects["apps/v1/deployments", NS, "smollm2"].history)
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 2.5}}, generation=2)
        await eventually(lambda: settings(cluster, "smollm2")["c"] == 2.5, what="ConfigMap c=2.5")
        await eventually(
            lambda: obj(cluster, LLMS, "smollm2")["status"]["schedulerGeneration"] == 2, what="schedulerGeneration 2"
        )
        await passes(cluster, "smollm2")  # resyncs write nothing more
    assert settings(cluster, "smollm2")["generation"] == 2
    assert len(cluster.objects["apps/v1/deployments", NS, "smollm2"].history) == versions_before
    assert requests_to(cluster, "deployments", "PATCH") == []


class FakeAdmin:
    """A pod's admin API as the operator uses it (GET and PUT of the config), no engine."""

    def __init__(self) -> None:
        self.view = ConfigView(generation=0, probe=None).model_dump(mode="json", by_alias=True)
        self.port = 0

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self.view)

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.view.update({key: value for key, value in body.items() if key in self.view and key != "probe"})
        return web.json_response(self.view)


@contextlib.asynccontextmanager
async def serving(admin: FakeAdmin):
    """``admin`` on a loopback port (``admin.port``) while the block runs."""
    app = web.Application()
    app.router.add_get(f"{ADMIN_PREFIX}/config", admin.get)
    app.router.add_put(f"{ADMIN_PREFIX}/config", admin.put)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    admin.port = runner.addresses[0][1]
    try:
        yield admin
    finally:
        await runner.cleanup()


async def with_a_ready_pod(cluster, port: int) -> None:
    """Create the LLMServer and, once its Deployment exists, a ready pod on ``port``."""
    await create(cluster, "smollm2", CPU_SPEC)
    await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
    add_pod(cluster, "smollm2", "127.0.0.1", port)
    await cluster.patch(f"/api/v1/namespaces/{NS}/pods/pod-0", json={"metadata": {"annotations": {"x": "1"}}})


@pytest.fixture
async def fake_admin():
    async with serving(FakeAdmin()) as admin:
        yield admin


async def test_editing_c_reaches_ready_pods_within_two_seconds(cluster, fake_admin):
    async with running_operator():
        await with_a_ready_pod(cluster, fake_admin.port)
        await eventually(
            lambda: condition(cluster, "smollm2", "SchedulerSynced")["reason"] == "AllPodsSynced", what="first sync"
        )
        started = time.monotonic()
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 2.5}}, generation=2)
        await eventually(lambda: fake_admin.view["c"] == 2.5, what="the pod runs c=2.5")
        elapsed = time.monotonic() - started
        reported = await eventually(
            lambda: obj(cluster, LLMS, "smollm2")["status"]["pods"][0]["c"] == 2.5, what="status reports c=2.5"
        )
    assert reported and fake_admin.view["generation"] == 2
    assert condition(cluster, "smollm2", "SchedulerSynced")["reason"] == "AllPodsSynced"
    print(f"\nedit -> the pod runs it: {elapsed:.2f} s")
    assert elapsed <= 2.0, f"edit -> pod took {elapsed:.2f} s"


async def test_a_pod_whose_guard_falls_back_is_shown_degraded_until_it_recovers(cluster, fake_admin):
    guard = GuardView(
        enabled=True,
        level="arrival-order",
        rank_correlation=-0.4,
        regret_ratio=None,
        samples=80,
        min_samples=50,
        resolved_preemptions=0,
    )
    fake_admin.view.update(
        ConfigView(generation=0, probe=None, effective_policy="fcfs", prediction_guard_state=guard).model_dump(
            mode="json", by_alias=True, include={"effective_policy", "prediction_guard_state"}
        )
    )

    def predictions() -> str:
        return condition(cluster, "smollm2", "PredictionsTrusted")["reason"]

    async with running_operator():
        await with_a_ready_pod(cluster, fake_admin.port)
        await eventually(lambda: predictions() == "PredictionsWeak", what="PredictionsWeak")
        status = obj(cluster, LLMS, "smollm2")["status"]
        assert status["degradedPods"] == "pod-0 (arrival-order)"
        assert (status["pods"][0]["effectivePolicy"], status["pods"][0]["predictionGuardState"]["rankCorrelation"]) == (
            "fcfs",
            -0.4,
        )
        fake_admin.view.update(
            effectivePolicy="trail",
            predictionGuardState={
                **fake_admin.view["predictionGuardState"],
                "level": "trusting",
                "rankCorrelation": 0.5,
            },
        )
        await eventually(lambda: predictions() == "PredictionsTrusted", what="PredictionsTrusted")
    assert "degradedPods" not in obj(cluster, LLMS, "smollm2")["status"]


async def test_editing_the_engine_rolls_the_deployment(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await edit_spec(cluster, "smollm2", {"engine": {"maxModelLen": 1024}}, generation=2)
        await eventually(
            lambda: (
                "1024"
                in obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["template"]["spec"]["containers"][0]["args"]
            ),
            what="new args",
        )
    assert settings(cluster, "smollm2")["generation"] == 1  # scheduler settings did not change


BAD_SPECS = {
    "missing-model-source": ({k: v for k, v in CPU_SPEC.items() if k != "model"}, "model"),
    "two-probe-sources": (
        {
            **CPU_SPEC,
            "scheduler": {
                "probe": {"configMapKeyRef": {"name": "p", "key": "k"}, "url": "https://e.x/p", "sha256": "a" * 64}
            },
        },
        "exactly one source",
    ),
    "negative-replicas": ({**CPU_SPEC, "replicas": -1}, "spec.replicas"),
    "unknown-policy": ({**CPU_SPEC, "scheduler": {"policy": "round-robin"}}, "spec.scheduler.policy"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=str)
async def test_bad_spec_is_reported_and_nothing_applied(cluster, case):
    spec, expected = BAD_SPECS[case]
    async with running_operator():
        await create(cluster, "broken", spec)
        degraded = await eventually(lambda: condition(cluster, "broken", "Degraded"), what="Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
    assert expected in degraded["message"]
    for resource, name in [
        ("apps/v1/deployments", "broken"),
        ("v1/services", "broken"),
        ("v1/configmaps", "broken-scheduler"),
        ("v1/secrets", "broken-admin"),
    ]:
        assert obj(cluster, resource, name) is None, f"{resource} was created for an invalid spec"


async def test_bad_edit_keeps_the_running_objects(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        before = obj(cluster, "apps/v1/deployments", "smollm2")
        await edit_spec(cluster, "smollm2", {"replicas": -1, "scheduler": {"c": 9.0}}, generation=2)
        await eventually(
            lambda: condition(cluster, "smollm2", "Degraded")["reason"] == "InvalidSpec", what="InvalidSpec"
        )
    assert obj(cluster, "apps/v1/deployments", "smollm2") == before
    assert settings(cluster, "smollm2")["c"] == 0.8  # no half-applied scheduler change


async def test_unreachable_pod_is_reported_and_retried(cluster):
    port = free_port()  # nothing listens here
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        add_pod(cluster, "smollm2", "127.0.0.1", port)
        await cluster.patch(f"/api/v1/namespaces/{NS}/pods/pod-0", json={"metadata": {"annotations": {"x": "1"}}})
        synced = await eventually(
            lambda: (
                (condition(cluster, "smollm2", "SchedulerSynced") or {}).get("reason") == "PodsPending"
                and condition(cluster, "smollm2", "SchedulerSynced")
            ),
            what="PodsPending",
        )
    assert synced["status"] == "False"
    assert "pod-0" in synced["message"] and "unreachable" in synced["message"]
    pods = obj(cluster, LLMS, "smollm2")["status"]["pods"]
    assert pods[0]["name"] == "pod-0" and pods[0]["synced"] is False
    assert condition(cluster, "smollm2", "Degraded")["status"] == "False"  # unreachable is not a rejection


async def test_probe_configmap_missing_is_an_apply_error_with_nothing_written(cluster):
    spec = copy.deepcopy(CPU_SPEC)
    spec["scheduler"]["probe"] = {"configMapKeyRef": {"name": "probes", "key": "p.bin"}}
    async with running_operator():
        await create(cluster, "smollm2", spec)
        degraded = await eventually(lambda: condition(cluster, "smollm2", "Degraded"), what="Degraded")
    assert degraded["reason"] == "ApplyFailed" and "probes" in degraded["message"]
    assert obj(cluster, "apps/v1/deployments", "smollm2") is None


async def test_object_owned_by_someone_else_is_not_touched(cluster):
    cluster.objects["v1/services", NS, "smollm2"] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smollm2", "namespace": NS},
    }
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        degraded = await eventually(lambda: condition(cluster, "smollm2", "Degraded"), what="Degraded")
    assert degraded["reason"] == "ApplyFailed" and "not controlled by this LLMServer" in degraded["message"]
    assert obj(cluster, "apps/v1/deployments", "smollm2") is None
    assert obj(cluster, "v1/services", "smollm2") == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "smollm2", "namespace": NS},
    }


async def test_restart_resumes_without_duplicates(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: condition(cluster, "smollm2", "SchedulerSynced"), what="status")
    token = obj(cluster, "v1/secrets", "smollm2-admin")["data"]["token"]
    # Edited while the operator is down (directly in the store: kmock's watch bus of the
    # stopped operator would block an API write).
    cluster.objects[LLMS, NS, "smollm2"].patch({"spec": {"scheduler": {"c": 4.0}}, "metadata": {"generation": 2}})
    async with running_operator():
        await eventually(lambda: settings(cluster, "smollm2")["c"] == 4.0, what="edit picked up after restart")
        await passes(cluster, "smollm2")
    for plural in ("deployments", "services", "configmaps", "secrets"):
        assert len(requests_to(cluster, plural, "POST")) == 1, f"{plural} created more than once"
    assert requests_to(cluster, "deployments", "PATCH") == []
    assert obj(cluster, "v1/secrets", "smollm2-admin")["data"]["token"] == token  # the same admin token


def _verb(request) -> str:
    method = str(getattr(request.method, "value", request.method)).upper()
    if method == "GET":
        return "watch" if request.params.get("watch") in ("true", "1") else ("get" if request.name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


async def test_every_api_call_is_allowed_by_the_rbac_permissions(cluster, monkeypatch):
    """The chart's ClusterRole comes from PERMISSIONS: the operator must not need more
    (NetworkPolicies on, a Secret replaced, a hand edit undone, every path that writes)."""
    monkeypatch.setenv("TRAIL_NETWORK_POLICY", "true")
    monkeypatch.setenv("TRAIL_OPERATOR_NAMESPACE", "trail-system")
    monkeypatch.setenv("TRAIL_OPERATOR_POD_LABELS", '{"app.kubernetes.io/name": "trail-operator"}')
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: condition(cluster, "smollm2", "SchedulerSynced"), what="status")
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 1.5}}, generation=2)
        await eventually(lambda: settings(cluster, "smollm2")["c"] == 1.5, what="edit")
        secret = obj(cluster, "v1/secrets", "smollm2-admin")
        secret["data"]["token"] = base64.b64encode(b"set-by-hand").decode()
        await cluster.patch(f"/api/v1/namespaces/{NS}/secrets/smollm2-admin", json={"data": secret["data"]})
        await eventually(
            lambda: obj(cluster, "v1/secrets", "smollm2-admin")["data"] != secret["data"], what="Secret replaced"
        )
        await cluster.delete(f"/apis/trail.dev/v1alpha1/namespaces/{NS}/llmservers/smollm2")
        await eventually(lambda: obj(cluster, LLMS, "smollm2") is None, what="deleted")
    allowed = {
        (group, resource, verb)
        for rule in PERMISSIONS
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    used = set()
    for request in cluster:
        if (
            request.resource is None
            or request.resource.plural is None
            or not request.headers.get("User-Agent", "").startswith(("kopf/", "python-httpx2/"))  # kopf, lightkube
        ):
            continue  # discovery, and the test's own calls (aiohttp), are not RBAC-checked
        plural = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        used.add((request.resource.group, plural, _verb(request)))
    assert used, "no API calls recorded"
    assert used <= allowed, f"calls not covered by PERMISSIONS: {sorted(used - allowed)}"
    assert ("trail.dev", "llmservers", "watch") in used and ("apps", "deployments", "create") in used
    assert {("", "secrets", "delete"), ("networking.k8s.io", "networkpolicies", "create")} <= used


async def test_a_deleted_admin_secret_is_recreated_with_a_new_token_and_no_pod_roll(cluster):
    """Rotation: delete the Secret. The next pass makes a new token; pods read it from the
    mounted Secret (the kubelet refreshes the file), so the pod template does not change."""
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        old = obj(cluster, "v1/secrets", "smollm2-admin")
        template = obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["template"]
        response = await cluster.delete(f"/api/v1/namespaces/{NS}/secrets/smollm2-admin")
        assert response.status == 200, await response.text()
        new = await eventually(lambda: obj(cluster, "v1/secrets", "smollm2-admin"), what="a new Secret")
        await passes(cluster, "smollm2")
    assert new["data"]["token"] != old["data"]["token"]
    token = base64.b64decode(new["data"]["token"]).decode()
    assert token not in json.dumps(new["metadata"]) and new["data"]["token"] not in json.dumps(new["metadata"])
    assert obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["template"] == template
    assert requests_to(cluster, "deployments", "PATCH") == []
    assert requests_to(cluster, "secrets", "PATCH") == []  # Secrets are created, never patched


async def test_a_hand_edit_of_the_deployment_is_undone(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        ours = obj(cluster, "apps/v1/deployments", "smollm2")
        args = ours["spec"]["template"]["spec"]["containers"][0]["args"]
        edited = {"name": "server", "args": [*args, "--enable-lora"], "securityContext": {"privileged": True}}
        # As `kubectl edit` stores it: the API server bumps metadata.generation (kmock does not).
        response = await cluster.patch(
            f"/apis/apps/v1/namespaces/{NS}/deployments/smollm2",
            json={
                "metadata": {"generation": 2},
                "spec": {"replicas": 7, "template": {"spec": {"containers": [edited]}}},
            },
        )
        assert response.status == 200, await response.text()
        await eventually(
            lambda: obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["replicas"] == 1, what="edit undone"
        )
    restored = obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["template"]["spec"]["containers"]
    assert restored == ours["spec"]["template"]["spec"]["containers"]


async def test_no_finalizer_so_deleting_needs_no_running_operator(cluster):
    """Without a finalizer the API server deletes an LLMServer at once, and its garbage
    collector what it owns (owner references), whether the operator runs or not."""
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: condition(cluster, "smollm2", "SchedulerSynced"), what="status")
        await passes(cluster, "smollm2", 3)  # resyncs included
    assert obj(cluster, LLMS, "smollm2")["metadata"].get("finalizers") in (None, [])


class RefusingAdmin(FakeAdmin):
    """A pod that refuses every settings change (a probe it cannot load), counting the PUTs."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put(self, request: web.Request) -> web.Response:
        self.puts += 1
        return web.json_response({"detail": "probe rejected: hidden size 64, the model's is 576"}, status=422)


@pytest.fixture
async def refusing_admin():
    async with serving(RefusingAdmin()) as admin:
        yield admin


async def test_refused_settings_are_sent_once_per_spec_change(cluster, refusing_admin):
    async with running_operator():
        await with_a_ready_pod(cluster, refusing_admin.port)
        degraded = await eventually(
            lambda: (
                (condition(cluster, "smollm2", "Degraded") or {}).get("reason") == "SettingsRejected"
                and condition(cluster, "smollm2", "Degraded")
            ),
            what="SettingsRejected",
        )
        await passes(cluster, "smollm2", 4)
        assert refusing_admin.puts == 1  # resyncs do not send it again
        refused = obj(cluster, LLMS, "smollm2")["status"]["refusedSettings"]
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 3.0}}, generation=2)
        await eventually(lambda: refusing_admin.puts == 2, what="the changed settings sent")
        await passes(cluster, "smollm2", 4)
    assert refusing_admin.puts == 2
    assert "hidden size 64" in degraded["message"] and "pod-0" in degraded["message"]
    assert refused["generation"] == 1 and "hidden size 64" in refused["message"]
    assert obj(cluster, LLMS, "smollm2")["status"]["refusedSettings"]["generation"] == 2


async def test_network_policies_when_the_chart_turns_them_on(cluster, monkeypatch):
    monkeypatch.setenv("TRAIL_NETWORK_POLICY", "true")
    monkeypatch.setenv("TRAIL_OPERATOR_NAMESPACE", "trail-system")
    monkeypatch.setenv("TRAIL_OPERATOR_POD_LABELS", '{"app.kubernetes.io/name": "trail-operator"}')
    async with running_operator():
        server = await create(cluster, "smollm2", CPU_SPEC)
        policy = await eventually(
            lambda: obj(cluster, "networking.k8s.io/v1/networkpolicies", "smollm2"), what="NetworkPolicy"
        )
        await passes(cluster, "smollm2")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == server["metadata"]["uid"]
    assert policy["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "trail-operator"
    }
    assert len(requests_to(cluster, "networkpolicies", "POST")) == 1


def posted_events(cluster, name):
    """The (type, reason, message) of the Events the operator posted about LLMServer ``name``."""
    return [
        (r.data["type"], r.data["reason"], r.data["message"])
        for r in requests_to(cluster, "events", "POST")
        if r.data["involvedObject"]["name"] == name and r.data["involvedObject"]["kind"] == "LLMServer"
    ]


async def test_an_autoscaler_scaling_the_llmserver_is_followed_and_never_reverted(cluster):
    """An HPA (or KEDA) writes spec.replicas through the LLMServer's scale subresource: the
    operator carries it to the Deployment and never writes the LLMServer's spec itself."""
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        response = await cluster.patch(
            f"/apis/trail.dev/v1alpha1/namespaces/{NS}/llmservers/smollm2/scale",
            json={"spec": {"replicas": 3}, "metadata": {"generation": 2}},
        )
        assert response.status == 200, await response.text()
        await eventually(
            lambda: obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["replicas"] == 3, what="scaled to 3"
        )
        await passes(cluster, "smollm2", 3)  # resyncs too
        events = posted_events(cluster, "smollm2")
    assert obj(cluster, LLMS, "smollm2")["spec"]["replicas"] == 3
    assert obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["replicas"] == 3
    operator_writes = [
        r.data
        for r in requests_to(cluster, "llmservers", "PATCH")
        if r.headers.get("User-Agent", "").startswith(("kopf/", "python-httpx2/"))
    ]
    assert operator_writes and not any("spec" in body for body in operator_writes)
    assert ("Normal", "Scaled", "Deployment scaled from 1 to 3 replicas") in events
    assert events[0][:2] == ("Normal", "Created")


async def test_passes_post_normal_events_for_the_lifecycle(cluster):
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await edit_spec(cluster, "smollm2", {"scheduler": {"c": 1.5}}, generation=2)
        await eventually(lambda: settings(cluster, "smollm2")["c"] == 1.5, what="edit")
        await cluster.patch(  # what the Deployment controller reports once the pod serves
            f"/apis/apps/v1/namespaces/{NS}/deployments/smollm2/status",
            json={"status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}},
        )
        await eventually(lambda: any(e[1] == "Ready" for e in posted_events(cluster, "smollm2")), what="Ready event")
        await passes(cluster, "smollm2", 3)  # resyncs post nothing more
    events = posted_events(cluster, "smollm2")
    assert [reason for _, reason, _ in events] == ["Created", "Retuned", "Ready"]
    assert {kind for kind, _, _ in events} == {"Normal"}
    assert events[0][2] == "created Secret, ConfigMap, Service, PodDisruptionBudget, Deployment"
    assert events[1][2] == "scheduler settings generation 2: 0/0 ready pods run them"


async def test_the_api_server_filters_the_pod_and_deployment_watches_by_label(cluster):
    """The operator asks for its own Pods and Deployments only: a cluster's other Pods never reach it."""
    async with running_operator():
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
    for plural in ("pods", "deployments"):
        reads = [r for r in requests_to(cluster, plural, "GET") if r.headers.get("User-Agent", "").startswith("kopf/")]
        assert reads, plural
        assert {r.params.get("labelSelector") for r in reads} == {"trail.dev/llmserver"}, plural


async def test_a_replica_that_does_not_lead_acts_on_nothing_resyncs_included(cluster):
    """kopf pauses a replica's handlers while a live peer outranks it; the resync loop (the
    operator's own task) must stop too, and both resume when the peer is gone."""
    me = Peering("trail-operator", "me", priority=10)
    path = "/apis/kopf.dev/v1/clusterkopfpeerings/trail-operator"
    async with running_operator(me):
        assert obj_at(cluster, "kopf.dev/v1/clusterkopfpeerings", "trail-operator") is not None  # made at start
        await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await passes(cluster, "smollm2")  # resyncs run: it leads
        seen = datetime.datetime.now(datetime.UTC).isoformat()
        rival = {"priority": 20, "lifetime": 60, "lastseen": seen}
        response = await cluster.patch(path, json={"status": {"other": rival}})
        assert response.status == 200, await response.text()
        await asyncio.sleep(1.5)  # kopf sees the peer and pauses
        response = await cluster.delete(f"/apis/apps/v1/namespaces/{NS}/deployments/smollm2")
        assert response.status == 200, await response.text()
        reads = operator_reads(cluster, "smollm2")
        await asyncio.sleep(3.0)  # six resync intervals
        assert operator_reads(cluster, "smollm2") == reads, "a paused replica ran passes"
        assert obj(cluster, "apps/v1/deployments", "smollm2") is None
        await cluster.patch(path, json={"status": {"other": None}})  # the peer left
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="the Deployment again")


def test_kopfs_rule_for_who_leads():
    now = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)

    def peer(priority, seconds_ago, lifetime=15):
        lastseen = (now - datetime.timedelta(seconds=seconds_ago)).isoformat()
        return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen}

    assert leads({}, "me", 5, now)
    assert leads({"me": peer(5, 0), "b": peer(4, 0)}, "me", 5, now)  # outranks the other
    assert not leads({"me": peer(5, 0), "b": peer(6, 0)}, "me", 5, now)
    assert not leads({"b": peer(5, 0)}, "me", 5, now)  # a tie pauses both, as in kopf
    assert leads({"b": peer(6, 20)}, "me", 5, now)  # dead: no keep-alive within its lifetime
    assert leads({"b": None, "c": {"priority": 9}}, "me", 5, now)  # left, or not a keep-alive


def test_the_oldest_replica_leads_and_a_restarted_one_joins_below_it():
    """Seniority: a leader killed and restarted (or replaced) comes back as a standby, so the
    standby that took over keeps the lead; replicas of the same second are ordered at random."""
    started = 1_780_000_000.0
    standby, restarted = seniority(started), seniority(started + 1)
    assert restarted < standby < 2**53
    now = datetime.datetime.now(datetime.UTC)
    alive = {"lifetime": 15, "lastseen": now.isoformat()}
    status = {"standby": {**alive, "priority": standby}, "restarted": {**alive, "priority": restarted}}
    assert leads(status, "standby", standby, now) and not leads(status, "restarted", restarted, now)
    assert len({seniority(started) for _ in range(50)}) > 1  # no tie by construction


async def test_an_inference_pool_is_created_with_routing_on_and_deleted_with_it_off(cluster):
    pools = "inference.networking.k8s.io/v1/inferencepools"
    async with running_operator():
        server = await create(cluster, "smollm2", CPU_SPEC)
        await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        assert obj(cluster, pools, "smollm2") is None  # off by default
        await edit_spec(cluster, "smollm2", {"routing": {"inferencePool": {"enabled": True}}}, generation=2)
        pool = await eventually(lambda: obj(cluster, pools, "smollm2"), what="InferencePool")
        await edit_spec(cluster, "smollm2", {"routing": {"inferencePool": {"enabled": False}}}, generation=3)
        await eventually(lambda: obj(cluster, pools, "smollm2") is None, what="InferencePool deleted")
        await passes(cluster, "smollm2")
    assert pool["metadata"]["ownerReferences"][0]["uid"] == server["metadata"]["uid"]  # deleted with the LLMServer too
    assert pool["spec"]["endpointPickerRef"]["name"] == "smollm2-epp"
    assert obj(cluster, "apps/v1/deployments", "smollm2") is not None  # only the pool went


async def test_a_cache_claim_is_made_for_the_llmserver_and_mounted_by_its_pods(cluster):
    claims = "v1/persistentvolumeclaims"
    spec = {**CPU_SPEC, "cache": {"size": "2Gi", "persistentVolumeClaim": {"accessMode": "ReadWriteOnce"}}}
    async with running_operator():
        server = await create(cluster, "smollm2", spec)
        claim = await eventually(lambda: obj(cluster, claims, "smollm2-cache"), what="the cache claim")
        deployment = await eventually(lambda: obj(cluster, "apps/v1/deployments", "smollm2"), what="Deployment")
        await edit_spec(cluster, "smollm2", {"cache": {"persistentVolumeClaim": None}}, generation=2)
        await eventually(lambda: obj(cluster, claims, "smollm2-cache") is None, what="the claim deleted")
        volumes = await eventually(
            lambda: (
                (v := obj(cluster, "apps/v1/deployments", "smollm2")["spec"]["template"]["spec"]["volumes"])
                and {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}} in v
                and v
            ),
            what="the pods back on an emptyDir",
        )
    assert claim["metadata"]["ownerReferences"][0]["uid"] == server["metadata"]["uid"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "smollm2-cache"}} in pod["volumes"]
    assert volumes
