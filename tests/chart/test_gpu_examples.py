"""The GPU examples as docs/kubernetes.md ("On a GPU cluster") has a user apply them: the
weights Job fills the claim and folder the tensor-parallel LLMServer reads, with the Secret
the one-GPU example reads, and each LLMServer's pod requests fit the node types the page
names. Offline: no cluster, no GPU."""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import sys
import types
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from chart_helpers import REPO
from lightkube.utils.quantity import parse_quantity

from trail_operator.layout import MODELS_DIR, Owner
from trail_operator.pod import RUN_AS, Images, build_deployment
from trail_operator.spec import parse_spec

DOC = REPO / "docs" / "kubernetes.md"
ONE_GPU = REPO / "examples" / "llmserver-llama3-8b-gpu.yaml"
TP = REPO / "examples" / "llmserver-llama3-8b-tp2.yaml"
WEIGHTS = REPO / "examples" / "weights" / "llama3-weights.yaml"
MIB, GIB = 1 << 20, 1 << 30
# Meta-Llama-3-8B-Instruct's four safetensors shards (the Job skips original/).
CHECKPOINT_BYTES = 16_070_000_000

# Node allocatable = capacity - kube-reserved - system-reserved - the eviction threshold.
# GKE ("Standard cluster architecture", node allocatable resources) and the EKS AMIs
# (bootstrap's kube-reserved) reserve CPU alike: 6% of the first core, 1% of the second,
# 0.5% of the next two, 0.25% of each core above four.
CPU_TIERS = [(1, 0.06), (2, 0.01), (4, 0.005), (math.inf, 0.0025)]
# GKE reserves memory (GiB) as 25% of the first 4, 20% of the next 4, 10% of the next 8,
# 6% of the next 112 and 2% above 128; the EKS AMIs 255 MiB + 11 MiB per pod the node may
# run (its eni-max-pods entry). Both evict below 100 MiB available.
GKE_MEMORY_TIERS = [(4, 0.25), (8, 0.20), (16, 0.10), (128, 0.06), (math.inf, 0.02)]
EVICTION_BYTES = 100 * MIB
# What must stay free beside the LLMServer's pod: the provider's DaemonSets on a GPU node
# (kube-proxy, logging and metrics agents, the GPU device plugin, CSI node drivers: about
# 0.5 CPU and 1 GiB of requests on GKE) and the part of the machine type's nominal memory
# the kernel keeps (a node's memory capacity is its MemTotal, a little under it).
HEADROOM = {"cpu": Decimal(1), "memory": Decimal(2 * GIB)}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}  # GKE's, on GPU pools


@dataclass(frozen=True)
class Node:
    cloud: str
    vcpus: int
    memory_gib: int  # the machine type's nominal size (GCE's "GB" are GiB)
    gpus: int
    labels: dict[str, str]
    taints: list[dict[str, str]] = field(default_factory=list)
    max_pods: int = 110

    def allocatable(self) -> dict[str, Decimal]:
        cpu = self.vcpus - _tiered(self.vcpus, CPU_TIERS)
        if self.cloud == "gke":
            reserved = _tiered(self.memory_gib, GKE_MEMORY_TIERS) * GIB
        else:
            reserved = (255 + 11 * self.max_pods) * MIB
        return {"cpu": Decimal(str(cpu)), "memory": Decimal(self.memory_gib * GIB - reserved - EVICTION_BYTES)}


def _tiered(total: float, tiers: list[tuple[float, float]]) -> float:
    reserved, low = 0.0, 0.0
    for upto, rate in tiers:
        reserved += max(0.0, min(total, upto) - low) * rate
        low = upto
    return reserved


# The A100 nodes as the page has them: the NVIDIA GPU Operator installed (its product label)
# and the pool labelled by the user.
POOL_LABEL = {"trail.dev/gpu-pool": "a100x2"}
A100_80GB = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
NODES = {
    "g2-standard-8": Node("gke", 8, 32, 1, {"cloud.google.com/gke-accelerator": "nvidia-l4"}, [GPU_TAINT]),
    "a2-ultragpu-2g": Node(
        "gke", 24, 340, 2, {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb", **A100_80GB, **POOL_LABEL}
    ),
    "p4de.24xlarge": Node("eks", 96, 1152, 8, {**A100_80GB, **POOL_LABEL}, max_pods=737),
}
FITS = [(ONE_GPU, "g2-standard-8"), (TP, "a2-ultragpu-2g"), (TP, "p4de.24xlarge")]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def weights() -> tuple[dict, dict]:
    claim, job = yaml.safe_load_all(WEIGHTS.read_text())
    assert (claim["kind"], job["kind"]) == ("PersistentVolumeClaim", "Job")
    return claim, job


def pod_of(path: Path) -> dict:
    deployment = build_deployment(Owner("demo", "default", "uid-1"), parse_spec(load(path)["spec"]), Images())
    return deployment["spec"]["template"]["spec"]


def pod_requests(pod: dict) -> dict[str, Decimal]:
    """What the scheduler counts: the containers' sum, or an init container's if larger."""

    def total(containers: list[dict], key: str) -> Decimal:
        return sum(
            (parse_quantity(c.get("resources", {}).get("requests", {}).get(key, "0")) for c in containers), Decimal(0)
        )

    inits = pod.get("initContainers", [])
    return {key: max([total(pod["containers"], key), *(total([c], key) for c in inits)]) for key in ("cpu", "memory")}


def tolerated(taint: dict, tolerations: list[dict]) -> bool:
    return any(
        t.get("key") in (None, taint["key"])
        and (t.get("operator") == "Exists" or t.get("value") == taint["value"])
        and t.get("effect") in (None, taint["effect"])
        for t in tolerations
    )


def required_terms_match(pod: dict, labels: dict[str, str]) -> bool:
    required = pod.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if not required:
        return True
    for term in required["nodeSelectorTerms"]:
        assert {e["operator"] for e in term["matchExpressions"]} <= {"In"}, "only In is modelled here"
        if all(labels.get(e["key"]) in e["values"] for e in term["matchExpressions"]):
            return True
    return False


@pytest.mark.parametrize(("example", "node_type"), FITS, ids=[f"{e.stem}-on-{n}" for e, n in FITS])
def test_each_gpu_example_fits_the_node_types_the_page_names(example, node_type):
    node, pod = NODES[node_type], pod_of(example)
    assert node_type in DOC.read_text(), f"the page does not name {node_type}"
    assert pod.get("nodeSelector", {}).items() <= node.labels.items(), f"{node_type} lacks the selected labels"
    assert required_terms_match(pod, node.labels), f"{node_type} fails the required node affinity"
    assert all(tolerated(taint, pod.get("tolerations", [])) for taint in node.taints)
    [container] = pod["containers"]
    gpus = int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
    assert 0 < gpus <= node.gpus
    requests, allocatable = pod_requests(pod), node.allocatable()
    unit = {"cpu": ("CPU", Decimal(1)), "memory": ("GiB", Decimal(GIB))}
    for key, (name, size) in unit.items():
        want, have, free = (round(value / size, 2) for value in (requests[key], allocatable[key], HEADROOM[key]))
        assert requests[key] > 0, f"{example.name} requests no {key}"
        assert requests[key] + HEADROOM[key] <= allocatable[key], (
            f"{example.name} requests {want} {name}; {node_type} has {have} {name} allocatable, {free} kept free"
        )


def test_the_weights_job_fills_the_claim_and_folder_the_tp_example_reads():
    claim, job = weights()
    for manifest in (claim, job):
        kubernetes_validate.validate(manifest, "1.30", strict=True)
    tp = load(TP)["spec"]
    source = tp["model"]["pvc"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    [volume] = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert claim["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"] == source["claimName"]
    # The Job writes under the claim's root what the server pod finds at MODELS_DIR/path.
    assert PurePosixPath(env["WEIGHTS_DIR"]["value"]) == PurePosixPath(mount["mountPath"]) / source["path"]
    server = pod_of(TP)
    args = server["containers"][0]["args"]
    assert args[args.index("--model") + 1] == f"{MODELS_DIR}/{source['path']}"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": source["claimName"], "readOnly": True}} in (
        server["volumes"]
    )
    # One node at a time unless the claim is ReadWriteMany.
    assert "ReadWriteMany" in claim["spec"]["accessModes"] or tp["replicas"] == 1
    # Room for the weights and, while the Job runs, the downloader's own cache (HF_HOME) beside them.
    assert parse_quantity(claim["spec"]["resources"]["requests"]["storage"]) >= Decimal(CHECKPOINT_BYTES) * 2
    # On the TP example's pool, so a zonal disk is created where the server pod can attach it.
    assert pod["nodeSelector"] == tp["nodeSelector"] and pod["tolerations"] == tp["tolerations"]
    # The server pods' user owns the files; the pod passes Pod Security "restricted".
    security = pod["securityContext"]
    assert (security["runAsUser"], security["fsGroup"], security["runAsNonRoot"]) == (RUN_AS, RUN_AS, True)
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1


def test_the_weights_job_downloads_the_one_gpu_examples_model_with_its_token(monkeypatch):
    """Runs the Job's Python with huggingface_hub stood in, and binds the call to the real
    snapshot_download's signature."""
    from huggingface_hub import snapshot_download

    _, job = weights()
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    hf = load(ONE_GPU)["spec"]["model"]["huggingFace"]
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == hf["tokenSecretRef"]
    assert env["MODEL_ID"]["value"] == hf["id"]
    [script] = container["args"]
    assert re.search(r"pip install .*'huggingface_hub==[\d.]+'", script), "pin the downloader's version"
    code = re.search(r"python -c '(.*?)'\n", script, re.DOTALL)
    assert code, "the Job's script runs its Python with python -c '...'"
    calls = []
    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=lambda *a, **k: calls.append((a, k)))
    )
    for name in ("MODEL_ID", "WEIGHTS_DIR"):
        monkeypatch.setenv(name, env[name]["value"])
    exec(compile(code.group(1), "job", "exec"), {})
    [(args, kwargs)] = calls
    bound = inspect.signature(snapshot_download).bind(*args, **kwargs).arguments
    assert bound["repo_id"] == hf["id"] and bound["local_dir"] == env["WEIGHTS_DIR"]["value"]
    assert "original/*" in bound["ignore_patterns"]  # the same weights again in Meta's format


def test_the_pages_secret_command_makes_the_secret_both_read(tmp_path):
    kubectl = Path(sys.executable).parent / "kubectl"
    if not kubectl.is_file():
        pytest.fail(f"no kubectl at {kubectl}: `make env` puts it there", pytrace=False)
    command = re.search(r"kubectl create secret generic .*", DOC.read_text())
    assert command, "the page must create the token Secret"
    args = command.group(0).split("#")[0].split()[1:]
    result = subprocess.run(
        [str(kubectl), *args, "--dry-run=client", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"KUBECONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    secret = yaml.safe_load(result.stdout)
    _, job = weights()
    [container] = job["spec"]["template"]["spec"]["containers"]
    [job_ref] = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "HF_TOKEN"]
    for ref in (load(ONE_GPU)["spec"]["model"]["huggingFace"]["tokenSecretRef"], job_ref):
        assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["data"]


def test_the_page_fills_the_weights_before_applying_the_tp_example_and_talks_to_the_gpu_one():
    text = DOC.read_text()
    _, job = weights()
    steps = [
        f"kubectl apply -f {WEIGHTS.relative_to(REPO)}",
        f"kubectl wait --for=condition=complete job/{job['metadata']['name']}",
        f"kubectl apply -f {TP.relative_to(REPO)}",
    ]
    at = [text.find(step) for step in steps]
    assert -1 not in at and at == sorted(at), f"the page must run, in order: {steps}"
    for key, value in load(TP)["spec"]["nodeSelector"].items():
        assert f"`{key}={value}`" in text, "the page must tell the user how to label the pool"
    one_gpu = load(ONE_GPU)
    assert f"kubectl port-forward svc/{one_gpu['metadata']['name']} 8000:8000" in text
    assert f'"model": "{one_gpu["spec"]["model"]["servedModelName"]}"' in text
