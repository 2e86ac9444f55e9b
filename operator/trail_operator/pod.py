"""The server pods: the Deployment, its pod template and the ``trail serve`` command line.

The template holds neither the scheduler settings nor the admin token: pods read both
from mounted files (the ConfigMap, the Secret), so changing either never rolls the pods.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lightkube.utils.quantity import parse_quantity

from trail_operator.layout import (
    ADMIN_PORT,
    ADMIN_PORT_NAME,
    CONTAINER_NAME,
    HTTP_PORT,
    HTTP_PORT_NAME,
    MODELS_DIR,
    SCHEDULER_DIR,
    SCHEDULER_FILE,
    TOKEN_KEY,
    Owner,
    metadata,
    names,
    selector_labels,
)
from trail_operator.spec import LLMServerSpec

CACHE_DIR = "/var/cache/trail"
TOKEN_DIR = "/var/run/secrets/trail"  # the admin-token Secret, mounted whole (kubelet refreshes it)
TOKEN_MODE = 0o440  # owner and group (fsGroup) read; nobody else
# The images' user (images/*/Dockerfile); the pods run as it, Pod Security "restricted".
RUN_AS = 10001
FETCH_DEADLINE_SECONDS = 7200  # model.url: the whole download and unpacking

DEFAULT_GPU_IMAGE = "ghcr.io/trail-k8s/trail-server-gpu:0.1.0"
DEFAULT_CPU_IMAGE = "ghcr.io/trail-k8s/trail-server-cpu:0.1.0"


@dataclass(frozen=True)
class Images:
    """The server images used when ``spec.engine.image`` is not set."""

    gpu: str = DEFAULT_GPU_IMAGE
    cpu: str = DEFAULT_CPU_IMAGE

    @classmethod
    def from_env(cls) -> Images:
        return cls(
            gpu=os.environ.get("TRAIL_DEFAULT_GPU_IMAGE") or DEFAULT_GPU_IMAGE,
            cpu=os.environ.get("TRAIL_DEFAULT_CPU_IMAGE") or DEFAULT_CPU_IMAGE,
        )


def model_volume(spec: LLMServerSpec) -> bool:
    """Whether the pods mount a model volume at MODELS_DIR (a pvc or a url download)."""
    return spec.model.pvc is not None or spec.model.url is not None


def probe_hosts(spec: LLMServerSpec) -> list[str]:
    """The hosts pods may fetch ``http(s)://`` probes from: ``scheduler.probeHosts`` and the
    host of ``scheduler.probe.url`` (empty: ``trail serve`` then accepts any host)."""
    hosts = set(spec.scheduler.probe_hosts)
    if spec.scheduler.probe is not None and spec.scheduler.probe.url is not None:
        hosts.add(urlsplit(spec.scheduler.probe.url).hostname or "")
    return sorted(hosts - {""})


def server_args(spec: LLMServerSpec) -> list[str]:
    """The ``trail serve`` command line (policy, c and the probe come from the ConfigMap)."""
    args = [
        "--port",
        str(HTTP_PORT),
        "--admin-port",
        str(ADMIN_PORT),
        "--admin-token-file",
        f"{TOKEN_DIR}/{TOKEN_KEY}",
        "--scheduler-config",
        f"{SCHEDULER_DIR}/{SCHEDULER_FILE}",
        # file:// probes only from where the operator puts them (the ConfigMap, the model volume).
        "--probe-dir",
        SCHEDULER_DIR,
    ]
    if model_volume(spec):
        args += ["--probe-dir", MODELS_DIR]
    for host in probe_hosts(spec):
        args += ["--probe-host", host]
    model = spec.model
    if model.hugging_face is not None:
        args += ["--model", model.hugging_face.id]
        if model.hugging_face.revision:
            args += ["--revision", model.hugging_face.revision]
    elif model.pvc is not None:
        args += ["--model", f"{MODELS_DIR}/{model.pvc.path}".rstrip("/")]
    elif model.url is not None:
        args += ["--model", MODELS_DIR]
    # model.bundled: no --model; `trail serve` then serves the image's bundled model.
    if model.served_model_name:
        args += ["--served-model-name", model.served_model_name]
    engine = spec.engine
    args += ["--tensor-parallel-size", str(engine.tensor_parallel_size)]
    optional = [
        ("--max-model-len", engine.max_model_len),
        ("--gpu-memory-utilization", engine.gpu_memory_utilization),
        ("--max-num-seqs", engine.max_num_seqs),
        ("--dtype", engine.dtype),
    ]
    args += [item for flag, value in optional if value is not None for item in (flag, str(value))]
    return args + list(engine.extra_args)


def node_storage_bytes(spec: LLMServerSpec) -> int:
    """What the pod keeps on the node's disk (its disk-backed emptyDirs at their limits):
    the cache and a model.url download, unless they go to the cache claim."""
    if spec.cache.persistent_volume_claim is not None:
        return 0
    total = int(parse_quantity(spec.cache.size))
    if spec.model.url is not None:
        total += 2 * spec.model.url.max_bytes
    return total


def url_model_folder(spec: LLMServerSpec) -> str:
    """Where a model.url checkpoint goes inside the cache claim: one folder per source, so
    every replica finds (and waits for) the same download, and a new URL gets its own."""
    assert spec.model.url is not None
    source = f"{spec.model.url.url} {spec.model.url.sha256 or ''}"
    return f"models/{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def _resources(spec: LLMServerSpec) -> dict[str, Any]:
    requests = {key: str(value) for key, value in spec.resources.requests.items()}
    on_node = node_storage_bytes(spec)
    if on_node and "ephemeral-storage" not in requests:
        # Scheduled where the disk has room, not evicted for filling it (an explicit request wins).
        requests["ephemeral-storage"] = str(on_node)
    limits = {key: str(value) for key, value in spec.resources.limits.items()}
    if spec.resources.gpus > 0:
        # Extended resources are requested through limits (requests must equal them).
        requests[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
        limits[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def image(spec: LLMServerSpec, images: Images) -> str:
    return spec.engine.image or (images.gpu if spec.resources.gpus > 0 else images.cpu)


def container_security() -> dict[str, Any]:
    """Every container's securityContext: Pod Security "restricted" (with the pod's)."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security() -> dict[str, Any]:
    """The pod's securityContext: the images' user; fsGroup makes the token file group-readable."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cache_volume(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """The Hugging Face cache: the LLMServer's claim, shared by every replica and restart,
    or the pod's own emptyDir (filled again by each new pod)."""
    if spec.cache.persistent_volume_claim is not None:
        return {"persistentVolumeClaim": {"claimName": names(owner)["cache"]}}
    return {"emptyDir": {"sizeLimit": spec.cache.size}}


def build_deployment(owner: Owner, spec: LLMServerSpec, images: Images) -> dict[str, Any]:
    n = names(owner)
    health = {"httpGet": {"path": "/health", "port": HTTP_PORT_NAME}}
    env = [{"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"}]
    hf = spec.model.hugging_face
    if hf is not None and hf.token_secret_ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": hf.token_secret_ref.name, "key": hf.token_secret_ref.key}},
            }
        )
    # An empty value is left out, as the API server stores it (else every pass would see a hand edit).
    env += [{"name": var.name, **({"value": var.value} if var.value else {})} for var in spec.engine.env]

    mounts = [
        {"name": "scheduler", "mountPath": SCHEDULER_DIR, "readOnly": True},
        # The whole Secret, no subPath: the kubelet then updates the file when the token changes.
        {"name": "admin-token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "scheduler", "configMap": {"name": n["configmap"]}},
        {"name": "admin-token", "secret": {"secretName": n["secret"], "defaultMode": TOKEN_MODE}},
        {"name": "cache", **cache_volume(owner, spec)},
    ]
    init_containers: list[dict[str, Any]] = []
    if spec.model.pvc is not None:
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": spec.model.pvc.claim_name, "readOnly": True}}
        )
    elif spec.model.url is not None:
        source = spec.model.url
        if spec.cache.persistent_volume_claim is not None:
            # Downloaded once into the shared claim; the server sees its folder as the model volume.
            folder = url_model_folder(spec)
            mounts.append({"name": "cache", "mountPath": MODELS_DIR, "subPath": folder, "readOnly": True})
            dest, fetch_mount = f"{CACHE_DIR}/{folder}", {"name": "cache", "mountPath": CACHE_DIR}
        else:
            mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
            # Room for the archive and its unpacked copy at once; the kubelet evicts a pod past it.
            volumes.append({"name": "model", "emptyDir": {"sizeLimit": str(2 * source.max_bytes)}})
            dest, fetch_mount = MODELS_DIR, {"name": "model", "mountPath": MODELS_DIR}
        fetch = ["python", "-m", "trail_operator.fetch_model", "--url", source.url, "--dest", dest]
        fetch += ["--max-bytes", str(source.max_bytes), "--deadline", str(FETCH_DEADLINE_SECONDS)]
        if source.sha256:
            fetch += ["--sha256", source.sha256]
        init_containers.append(
            {
                "name": "fetch-model",
                "image": image(spec, images),
                "command": fetch,
                "volumeMounts": [fetch_mount],
                "securityContext": container_security(),
                "terminationMessagePolicy": "FallbackToLogsOnError",  # the reason shows in the pod's status
            }
        )
    # vLLM's processes talk through shared memory (its message queue takes 160 MiB; NCCL more,
    # between tensor-parallel workers): a container runtime's 64 MiB /dev/shm stops it at start.
    # A memory-backed emptyDir is as large as the pod's memory limit and counts against it.
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image(spec, images),
        "command": ["trail", "serve"],
        "args": server_args(spec),
        "ports": [
            {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",  # why a crash-looping server exits
        # Model loading (and downloads) can take many minutes: the startup probe allows 30.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6},
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "securityContext": pod_security(),
        "automountServiceAccountToken": False,  # the server never talks to the Kubernetes API
        "terminationGracePeriodSeconds": 60,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name

    meta = metadata(owner, n["deployment"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.update_strategy.max_surge,
                    "maxUnavailable": spec.update_strategy.max_unavailable,
                },
            },
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec},
        },
    }
