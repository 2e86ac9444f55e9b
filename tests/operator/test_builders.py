"""The pure manifest builders: what reaches the cluster for a given spec."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
from conftest import EXAMPLES, load

from trail_contract.admin_api import ConfigUpdate
from trail_operator.layout import ADMIN_PORT, HTTP_PORT, MODELS_DIR, SCHEDULER_DIR, SCHEDULER_FILE, TOKEN_KEY, Owner
from trail_operator.owned import Peer, build_all, secret_token
from trail_operator.pod import (
    CACHE_DIR,
    DEFAULT_CPU_IMAGE,
    FETCH_DEADLINE_SECONDS,
    RUN_AS,
    TOKEN_DIR,
    Images,
    url_model_folder,
)
from trail_operator.scheduler_settings import desired_settings, live_settings, probe_sha256, scheduler_generation
from trail_operator.spec import parse_spec

OWNER = Owner(name="demo", namespace="ml", uid="1234-uid")
IMAGES = Images(gpu="gpu-image:1", cpu="cpu-image:1")
PROBE = b"\x00probe-bytes" * 200


def settings_at(spec, generation, probe_data=None):
    return desired_settings(spec, probe_data).model_copy(update={"generation": generation})


def build(spec_dict, probe_data=None, generation=3):
    spec = parse_spec(spec_dict)
    settings = settings_at(spec, generation, probe_data)
    return spec, build_all(OWNER, spec, IMAGES, token="tok", settings=settings, probe_data=probe_data)


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_built_objects_are_valid_kubernetes(path) -> None:
    _, objects = build(load(path)["spec"])
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30", strict=True)
        refs = obj["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "trail.dev/v1alpha1",
                "kind": "LLMServer",
                "name": "demo",
                "uid": "1234-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_gpu_example_requests_gpus_and_targets_the_pool() -> None:
    _, (*_, deployment) = build(load(EXAMPLES[1])["spec"])
    pod = deployment["spec"]["template"]["spec"]
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container(deployment)["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container(deployment)["image"] == "gpu-image:1"
    env = {e["name"]: e for e in container(deployment)["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_the_admin_token_is_a_mounted_file_never_in_the_pod_template(cpu_example) -> None:
    """Pods read the token from the whole Secret mounted (no subPath: the kubelet updates the
    file when the Secret changes), so a new token needs no new pod template."""
    _, (*_, deployment) = build(cpu_example["spec"])
    pod, c = deployment["spec"]["template"]["spec"], container(deployment)
    args = c["args"]
    assert args[args.index("--admin-token-file") + 1] == f"{TOKEN_DIR}/{TOKEN_KEY}"
    volume = next(v for v in pod["volumes"] if v["name"] == "admin-token")
    assert volume == {"name": "admin-token", "secret": {"secretName": "demo-admin", "defaultMode": 0o440}}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "admin-token")
    assert mount == {"name": "admin-token", "mountPath": TOKEN_DIR, "readOnly": True}
    assert pod["securityContext"]["fsGroup"] == RUN_AS  # group-readable for uid 10001
    assert "TRAIL_ADMIN_TOKEN" not in json.dumps(deployment)
    spec = parse_spec(cpu_example["spec"])
    first, second = (
        build_all(OWNER, spec, IMAGES, token=token, settings=settings_at(spec, 1), probe_data=None)
        for token in ("first-token-value", "second-token-value")
    )
    assert secret_token(first[0]) == "first-token-value"
    assert first[1:] == second[1:]  # a new token changes the Secret alone
    assert "first-token-value" not in json.dumps(first[1:])


def test_tensor_parallel_example_gets_two_gpus_shm_affinity_and_runtime_class() -> None:
    spec, (*_, deployment) = build(load(EXAMPLES[2])["spec"])
    pod = deployment["spec"]["template"]["spec"]
    args = container(deployment)["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--model") + 1] == "/models/Meta-Llama-3-8B-Instruct"
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["affinity"] == spec.affinity
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "llama3-weights", "readOnly": True}} in pod[
        "volumes"
    ]


def test_cpu_example_uses_cpu_image_no_gpu_and_bundled_model(cpu_example) -> None:
    _, (*_, deployment) = build(cpu_example["spec"])
    c = container(deployment)
    assert c["image"] == "cpu-image:1"
    assert "--model" not in c["args"]
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert c["command"] == ["trail", "serve"]
    assert c["args"][:10] == [
        "--port",
        "8000",
        "--admin-port",
        "8001",
        "--admin-token-file",
        "/var/run/secrets/trail/token",
        "--scheduler-config",
        "/etc/trail/scheduler/scheduler.json",
        "--probe-dir",
        "/etc/trail/scheduler",
    ]
    assert "--probe-host" not in c["args"]
    assert c["args"][-1] == "--enforce-eager"  # extraArgs last
    assert {"--dtype", "float32", "--max-model-len", "2048"} <= set(c["args"])
    # Shared memory beyond a container runtime's 64 MiB, without tensor parallelism too.
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in deployment["spec"]["template"]["spec"]["volumes"]


def test_ports_are_named_and_service_exposes_only_http(cpu_example) -> None:
    _, (_, _, service, _, deployment) = build(cpu_example["spec"])
    assert {p["name"]: p["containerPort"] for p in container(deployment)["ports"]} == {"http": 8000, "admin": 8001}
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_scheduler_settings_are_in_the_configmap_not_in_the_pod(cpu_example) -> None:
    _, (_, configmap, *_, deployment) = build(cpu_example["spec"])
    settings = json.loads(configmap["data"]["scheduler.json"])
    assert (settings["policy"], settings["c"], settings["generation"]) == ("trail", 0.8, 3)
    template = json.dumps(deployment["spec"]["template"])
    assert "0.8" not in template and "--c" not in template and "--policy" not in template


@pytest.mark.parametrize(
    "change",
    [
        {"c": 3.5},
        {"policy": "sjf"},
        {"predictEvery": 4},
        {"maxWaitSeconds": 30},
        {"probe": {"url": "https://example.com/p.bin", "sha256": "a" * 64}},
    ],
)
def test_scheduler_only_change_leaves_pod_template_identical(cpu_example, change) -> None:
    spec = copy.deepcopy(cpu_example["spec"])
    spec["scheduler"]["probeHosts"] = ["example.com"]  # a probe.url there needs no new flag
    before = build(spec, generation=3)[1]
    edited = copy.deepcopy(spec)
    edited["scheduler"].update(change)
    after = build(edited, generation=4)[1]
    assert json.dumps(before[-1], sort_keys=True) == json.dumps(after[-1], sort_keys=True)  # Deployment
    assert before[1]["data"] != after[1]["data"]  # only the ConfigMap changed


def test_probe_sources_the_pods_accept(cpu_example) -> None:
    """file:// probes only from the folders the operator mounts; http(s) probes only from the
    hosts the spec names (probeHosts and probe.url's): a new host is a start-up flag."""
    spec = copy.deepcopy(cpu_example["spec"])
    spec["scheduler"]["probeHosts"] = ["probes.example.com", "10.0.0.9"]
    spec["scheduler"]["probe"] = {"url": "https://cdn.example.org:8443/p.bin", "sha256": "a" * 64}
    args = container(build(spec)[1][-1])["args"]
    pairs = list(zip(args, args[1:], strict=False))
    assert [value for flag, value in pairs if flag == "--probe-host"] == [
        "10.0.0.9",
        "cdn.example.org",
        "probes.example.com",
    ]
    assert [value for flag, value in pairs if flag == "--probe-dir"] == ["/etc/trail/scheduler"]
    pvc = {"pvc": {"claimName": "weights", "path": "llama"}}
    args = container(build({**cpu_example["spec"], "model": pvc})[1][-1])["args"]
    assert [v for f, v in zip(args, args[1:], strict=False) if f == "--probe-dir"] == [
        "/etc/trail/scheduler",
        "/models",
    ]
    # The file:// URLs the operator sends are under those folders.
    probe = {"configMapKeyRef": {"name": "probes", "key": "p.bin"}}
    cm_spec = parse_spec({**cpu_example["spec"], "scheduler": {"probe": probe}})
    assert desired_settings(cm_spec, PROBE).probe.url.startswith(f"file://{SCHEDULER_DIR}/")
    path_spec = parse_spec(
        {**cpu_example["spec"], "model": pvc, "scheduler": {"probe": {"path": "p.bin", "sha256": "a" * 64}}}
    )
    assert desired_settings(path_spec, None).probe.url == "file:///models/p.bin"


def test_a_probe_url_on_a_new_host_rolls_the_pods(cpu_example) -> None:
    edited = copy.deepcopy(cpu_example["spec"])
    edited["scheduler"]["probe"] = {"url": "https://example.com/p.bin", "sha256": "a" * 64}
    assert build(edited)[1][-1]["spec"]["template"] != build(cpu_example["spec"])[1][-1]["spec"]["template"]


def test_engine_change_changes_pod_template(cpu_example) -> None:
    edited = copy.deepcopy(cpu_example["spec"])
    edited["engine"]["maxModelLen"] = 4096
    assert build(edited)[1][-1]["spec"]["template"] != build(cpu_example["spec"])[1][-1]["spec"]["template"]


def test_configmap_probe_is_copied_and_referenced_by_sha(cpu_example) -> None:
    spec_dict = copy.deepcopy(cpu_example["spec"])
    spec_dict["scheduler"]["probe"] = {"configMapKeyRef": {"name": "probes", "key": "p.bin"}}
    spec, (_, configmap, *_) = build(spec_dict, probe_data=PROBE)
    settings = json.loads(configmap["data"]["scheduler.json"])
    sha = probe_sha256(spec, PROBE)
    assert settings["probe"] == {"url": "file:///etc/trail/scheduler/probe.bin", "sha256": sha}
    assert "probe.bin" in configmap["binaryData"]
    live = live_settings(spec, desired_settings(spec, PROBE), PROBE)
    assert set(live.probe.model_dump(exclude_unset=True)) == {"data"}


def test_url_model_gets_fetch_init_container() -> None:
    _, (*_, deployment) = build({"model": {"url": {"url": "https://x.example/m.tar.gz", "sha256": "b" * 64}}})
    pod = deployment["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    assert init["command"][:3] == ["python", "-m", "trail_operator.fetch_model"]
    assert init["command"][-2:] == ["--sha256", "b" * 64]
    cap = 64 << 30  # the CRD's default model.url.maxBytes
    assert init["command"][init["command"].index("--max-bytes") + 1] == str(cap)
    assert init["command"][init["command"].index("--deadline") + 1] == str(FETCH_DEADLINE_SECONDS)
    assert {"name": "model", "emptyDir": {"sizeLimit": str(2 * cap)}} in pod["volumes"]


def test_default_images_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("TRAIL_DEFAULT_GPU_IMAGE", "registry/gpu:9")
    monkeypatch.delenv("TRAIL_DEFAULT_CPU_IMAGE", raising=False)
    assert Images.from_env() == Images(gpu="registry/gpu:9", cpu=DEFAULT_CPU_IMAGE)


def test_scheduler_generation_moves_only_when_settings_do() -> None:
    desired = {
        "policy": "trail",
        "c": 0.8,
        "predictEvery": 1,
        "maxWaitSeconds": None,
        "preemptionMargin": 0,
        "maxPreemptions": None,
    }
    stored = ConfigUpdate(**desired, generation=5)
    assert scheduler_generation(stored, ConfigUpdate(**desired), 9) == 5
    assert scheduler_generation(stored, ConfigUpdate(**{**desired, "c": 1.0}), 9) == 9
    assert scheduler_generation(stored, ConfigUpdate(**{**desired, "c": 1.0}), None) == 6
    assert scheduler_generation(None, ConfigUpdate(**desired), None) == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_trail_serve_reads_the_settings_file_the_operator_writes(path, tmp_path) -> None:
    """The pod's start-up path: the ConfigMap's file, read by `trail serve --scheduler-config`
    exactly as the server container's args say (an extra field here once crash-looped every pod)."""
    import argparse

    from trail_scheduler.server.serve import add_arguments, scheduler_settings

    spec, objects = build(load(path)["spec"], generation=7)
    configmap, deployment = objects[1], objects[-1]
    (tmp_path / SCHEDULER_FILE).write_text(configmap["data"][SCHEDULER_FILE])
    args = container(deployment)["args"]
    config_flag = args.index("--scheduler-config")
    assert args[config_flag + 1] == f"{SCHEDULER_DIR}/{SCHEDULER_FILE}"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    # The probe is fetched at start; here only the settings are read (no download).
    parsed, _ = parser.parse_known_args(["--scheduler-config", str(tmp_path / SCHEDULER_FILE), "--probe", "none"])
    settings, _, generation = scheduler_settings(parsed)
    assert generation == 7
    assert (settings.policy, settings.c, settings.predict_every) == (
        spec.scheduler.policy,
        spec.scheduler.c,
        spec.scheduler.predict_every,
    )
    assert settings.max_wait_seconds == spec.scheduler.max_wait_seconds


def test_network_policy_opens_the_openai_port_and_the_admin_port_to_the_operator_only(cpu_example) -> None:
    peer = Peer("trail-system", {"app.kubernetes.io/name": "trail-operator", "app.kubernetes.io/instance": "t"})
    spec = parse_spec(cpu_example["spec"])
    objects = build_all(OWNER, spec, IMAGES, token="tok", settings=settings_at(spec, 1), probe_data=None, peer=peer)
    kinds = ["Secret", "ConfigMap", "Service", "PodDisruptionBudget", "NetworkPolicy", "Deployment"]
    assert [o["kind"] for o in objects] == kinds
    policy, deployment = objects[4], objects[5]
    kubernetes_validate.validate(policy, "1.30", strict=True)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    open_port, admin = policy["spec"]["ingress"]
    assert open_port == {"ports": [{"protocol": "TCP", "port": HTTP_PORT}]}  # from anywhere
    assert admin["ports"] == [{"protocol": "TCP", "port": ADMIN_PORT}]
    assert admin["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "trail-system"}},
            "podSelector": {"matchLabels": peer.labels},
        }
    ]
    assert "NetworkPolicy" not in [o["kind"] for o in build(cpu_example["spec"])[1]]  # off: none


def test_network_policy_settings_come_from_the_charts_env(monkeypatch) -> None:
    monkeypatch.delenv("TRAIL_NETWORK_POLICY", raising=False)
    assert Peer.from_env() is None
    monkeypatch.setenv("TRAIL_NETWORK_POLICY", "true")
    monkeypatch.setenv("TRAIL_OPERATOR_NAMESPACE", "ops")
    monkeypatch.delenv("TRAIL_OPERATOR_POD_LABELS", raising=False)
    with pytest.raises(ValueError, match="TRAIL_OPERATOR_POD_LABELS"):
        Peer.from_env()
    monkeypatch.setenv("TRAIL_OPERATOR_POD_LABELS", '{"app": "op"}')
    assert Peer.from_env() == Peer("ops", {"app": "op"})


def test_env_names_the_operator_sets_are_reserved() -> None:
    """Every variable the builders set is one engine.env may not set (spec.RESERVED_ENV)."""
    from trail_operator.spec import RESERVED_ENV

    hf = {"huggingFace": {"id": "org/model", "tokenSecretRef": {"name": "hf"}}}
    for spec in [load(path)["spec"] for path in EXAMPLES] + [{"model": hf}]:
        env = container(build(spec)[1][-1])["env"]
        user = {var["name"] for var in spec.get("engine", {}).get("env", [])}
        assert {var["name"] for var in env} - user <= {*RESERVED_ENV, "HF_TOKEN"}


def test_disruption_budget_guards_the_deployments_pods(cpu_example) -> None:
    spec, objects = build({**cpu_example["spec"], "disruptionBudget": {"maxUnavailable": 2}})
    budget, deployment = next(o for o in objects if o["kind"] == "PodDisruptionBudget"), objects[-1]
    kubernetes_validate.validate(budget, "1.30", strict=True)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 2
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a broken pod never blocks a drain
    default = next(o for o in build(cpu_example["spec"])[1] if o["kind"] == "PodDisruptionBudget")
    assert default["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"maxSurge": 1, "maxUnavailable": 0}),
        ({"maxSurge": 0, "maxUnavailable": 1}, {"maxSurge": 0, "maxUnavailable": 1}),
    ],
)
def test_update_strategy_reaches_the_deployment(cpu_example, given, expected) -> None:
    """The default starts a new pod before stopping an old one; a full GPU pool asks for maxSurge 0."""
    deployment = build({**cpu_example["spec"], "updateStrategy": given})[1][-1]
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": expected}


def test_an_inference_pool_only_when_routing_asks_for_one(cpu_example) -> None:
    assert "InferencePool" not in [o["kind"] for o in build(cpu_example["spec"])[1]]
    routing = {"inferencePool": {"enabled": True, "endpointPicker": {"failureMode": "FailOpen"}}}
    _, objects = build({**cpu_example["spec"], "routing": routing})
    pool, deployment = next(o for o in objects if o["kind"] == "InferencePool"), objects[-1]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert pool["spec"]["selector"] == deployment["spec"]["selector"]  # the pods, and only them
    assert pool["spec"]["targetPorts"] == [{"number": HTTP_PORT}]
    assert pool["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "demo-epp",  # default: NAME-epp
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }


def test_the_cache_is_a_sized_emptydir_requested_from_the_nodes_disk_by_default() -> None:
    _, objects = build({"model": {"url": {"url": "https://x.example/m.tar", "maxBytes": 1 << 30}}})
    deployment = objects[-1]
    assert {"name": "cache", "emptyDir": {"sizeLimit": "20Gi"}} in deployment["spec"]["template"]["spec"]["volumes"]
    # the cache (20 GiB) and the url download (twice 1 GiB) stay on the node
    assert container(deployment)["resources"]["requests"]["ephemeral-storage"] == str((20 << 30) + (2 << 30))
    assert "PersistentVolumeClaim" not in [o["kind"] for o in objects]
    mine = build({"model": {"bundled": True}, "resources": {"requests": {"ephemeral-storage": "5Gi"}}})[1][-1]
    assert container(mine)["resources"]["requests"]["ephemeral-storage"] == "5Gi"  # an explicit request wins


def test_a_cache_claim_is_shared_by_every_replica_and_restart() -> None:
    cache = {"size": "60Gi", "persistentVolumeClaim": {"storageClassName": "filestore"}}
    _, objects = build({"model": {"huggingFace": {"id": "meta-llama/Meta-Llama-3-8B-Instruct"}}, "cache": cache})
    claim, deployment = next(o for o in objects if o["kind"] == "PersistentVolumeClaim"), objects[-1]
    kubernetes_validate.validate(claim, "1.30", strict=True)
    assert claim["metadata"]["name"] == "demo-cache" and claim["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert claim["spec"] == {
        "accessModes": ["ReadWriteMany"],  # replicas on different nodes
        "resources": {"requests": {"storage": "60Gi"}},
        "storageClassName": "filestore",
    }
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "demo-cache"}} in pod["volumes"]
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    assert env["HF_HOME"].startswith(CACHE_DIR)  # the downloads land in the claim
    assert "ephemeral-storage" not in container(deployment).get("resources", {}).get("requests", {})
    assert objects.index(claim) < objects.index(deployment)  # the claim exists before pods mount it


def test_a_url_model_with_a_cache_claim_is_downloaded_once_into_it() -> None:
    """Every replica's init container fetches into the same folder of the claim (the fetch
    skips a complete copy, and waits on a lock for one in progress); the server mounts it."""
    url = {"url": "https://x.example/m.tar", "maxBytes": 1 << 30}
    cache = {"size": "10Gi", "persistentVolumeClaim": {}}
    spec, objects = build({"model": {"url": url}, "cache": cache})
    pod = objects[-1]["spec"]["template"]["spec"]
    folder = url_model_folder(spec)
    init = pod["initContainers"][0]
    assert init["command"][init["command"].index("--dest") + 1] == f"{CACHE_DIR}/{folder}"
    assert init["volumeMounts"] == [{"name": "cache", "mountPath": CACHE_DIR}]
    models = next(m for m in container(objects[-1])["volumeMounts"] if m["mountPath"] == MODELS_DIR)
    assert models == {"name": "cache", "mountPath": MODELS_DIR, "subPath": folder, "readOnly": True}
    assert "model" not in [v["name"] for v in pod["volumes"]]  # no per-pod copy
    assert "ephemeral-storage" not in container(objects[-1]).get("resources", {}).get("requests", {})
    other = parse_spec({"model": {"url": {**url, "url": "https://x.example/n.tar"}}, "cache": cache})
    assert url_model_folder(other) != folder  # a new source never reads the old copy
