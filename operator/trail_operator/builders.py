"""Pure manifest builders: an LLMServer (name, namespace, uid, parsed spec) → the
Deployment, Service, ConfigMap and Secret it owns.

No I/O here: the handlers fetch what these need (the admin token, the probe bytes of a
ConfigMap probe source, the operator's default images) and pass it in. Scheduler
settings live only in the ConfigMap, never in the pod template, so a change to
``spec.scheduler`` cannot roll the pods.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from trail_operator.crd import API_VERSION, KIND
from trail_operator.spec import LLMServerSpec
from trail_scheduler.api import SETTING_KEYS, ConfigUpdate, read_settings_file, settings_file_text

HTTP_PORT = 8000
ADMIN_PORT = 8001
HTTP_PORT_NAME = "http"
ADMIN_PORT_NAME = "admin"  # the retune client finds each pod's admin API by this name
CONTAINER_NAME = "server"
SCHEDULER_DIR = "/etc/trail/scheduler"
SCHEDULER_FILE = "scheduler.json"
PROBE_FILE = "probe.bin"
MODELS_DIR = "/models"
CACHE_DIR = "/var/cache/trail"
TOKEN_KEY = "token"
TOKEN_ENV = "TRAIL_ADMIN_TOKEN"

DEFAULT_GPU_IMAGE = "ghcr.io/trail-k8s/trail-server-gpu:0.1.0"
DEFAULT_CPU_IMAGE = "ghcr.io/trail-k8s/trail-server-cpu:0.1.0"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVER = "trail.dev/llmserver"
APP_NAME = "trail-server"
MANAGER = "trail-operator"


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


@dataclass(frozen=True)
class Owner:
    """The LLMServer the objects belong to."""

    name: str
    namespace: str
    uid: str


def names(owner: Owner) -> dict[str, str]:
    return {
        "deployment": owner.name,
        "service": owner.name,
        "configmap": f"{owner.name}-scheduler",
        "secret": f"{owner.name}-admin",
    }


def selector_labels(owner: Owner) -> dict[str, str]:
    return {LABEL_NAME: APP_NAME, LABEL_SERVER: owner.name}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(owner).items()))


def endpoint(owner: Owner) -> str:
    return f"http://{names(owner)['service']}.{owner.namespace}.svc:{HTTP_PORT}/v1"


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**selector_labels(owner), LABEL_INSTANCE: owner.name, LABEL_MANAGED_BY: MANAGER},
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


# --- scheduler settings -------------------------------------------------------------


def probe_sha256(spec: LLMServerSpec, probe_data: bytes | None) -> str | None:
    """The sha256 pods should report for the probe in ``spec`` (None: no probe)."""
    probe = spec.scheduler.probe
    if probe is None:
        return None
    if probe.config_map_key_ref is not None:
        if probe_data is None:
            raise ValueError("a configMapKeyRef probe needs its bytes (probe_data)")
        return hashlib.sha256(probe_data).hexdigest()
    return probe.sha256


def scheduler_update(spec: LLMServerSpec, generation: int, probe_data: bytes | None, *, live: bool) -> dict[str, Any]:
    """The admin API body (camelCase) for ``spec.scheduler``.

    ``live=False`` is the ConfigMap file a pod reads at start: a ConfigMap probe is the
    copy mounted next to it. ``live=True`` is the PUT to a running pod: the probe bytes
    travel inline. Validated through the shared wire model, so a body the pod would
    refuse fails here first.
    """
    body: dict[str, Any] = {**spec.scheduler.wire(), "generation": generation}
    probe = spec.scheduler.probe
    if probe is not None:
        sha = probe_sha256(spec, probe_data)
        if probe.config_map_key_ref is not None:
            assert probe_data is not None
            body["probe"] = (
                {"data": base64.b64encode(probe_data).decode()}
                if live
                else {"url": f"file://{SCHEDULER_DIR}/{PROBE_FILE}", "sha256": sha}
            )
        elif probe.url is not None:
            body["probe"] = {"url": probe.url, "sha256": sha}
        else:
            body["probe"] = {"url": f"file://{MODELS_DIR}/{probe.path}", "sha256": sha}
    ConfigUpdate.model_validate(body)  # raises if a pod would refuse it
    return body


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two admin-API settings dicts (update or view) agree on the tunable knobs."""
    return all(a.get(key) == b.get(key) for key in SETTING_KEYS)


def scheduler_generation(
    stored: dict[str, Any] | None, desired: dict[str, Any], meta_generation: int | None, desired_sha: str | None
) -> int:
    """The generation to stamp on the settings: unchanged while the settings are, else a
    new one (the resource's metadata.generation, and always above the stored one)."""
    stored_sha = ((stored or {}).get("probe") or {}).get("sha256")
    if stored is not None and same_settings(stored, desired) and stored_sha == desired_sha:
        return int(stored.get("generation") or 0)
    previous = int(stored.get("generation") or 0) if stored else 0
    return max(int(meta_generation or 0), previous + 1)


def build_configmap(owner: Owner, spec: LLMServerSpec, generation: int, probe_data: bytes | None) -> dict[str, Any]:
    # The probe's sha256 in the file also tells a restarted operator which probe it holds.
    settings = ConfigUpdate.model_validate(scheduler_update(spec, generation, probe_data, live=False))
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, names(owner)["configmap"]),
        "data": {SCHEDULER_FILE: settings_file_text(settings)},
    }
    if spec.scheduler.probe is not None and spec.scheduler.probe.config_map_key_ref is not None:
        assert probe_data is not None
        configmap["binaryData"] = {PROBE_FILE: base64.b64encode(probe_data).decode()}
    return configmap


def stored_settings(configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings file inside an existing scheduler ConfigMap (None if absent/unreadable)."""
    try:
        text = ((configmap or {}).get("data") or {})[SCHEDULER_FILE]
        return read_settings_file(text).model_dump(mode="json", by_alias=True, exclude_unset=True)
    except (KeyError, TypeError, ValueError):
        return None


# --- secret, service, deployment ----------------------------------------------------


def build_secret(owner: Owner, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(owner, names(owner)["secret"]),
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def secret_token(secret: dict[str, Any] | None) -> str | None:
    try:
        return base64.b64decode((secret or {})["data"][TOKEN_KEY]).decode() or None
    except (KeyError, TypeError, ValueError):
        return None


def build_service(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, names(owner)["service"]),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            # Only the OpenAI port: the admin API is reached pod by pod, never through here.
            "ports": [{"name": HTTP_PORT_NAME, "port": HTTP_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}],
        },
    }


def server_args(spec: LLMServerSpec) -> list[str]:
    """The ``trail serve`` command line (policy, c and the probe come from the ConfigMap)."""
    args = [
        "--port",
        str(HTTP_PORT),
        "--admin-port",
        str(ADMIN_PORT),
        "--scheduler-config",
        f"{SCHEDULER_DIR}/{SCHEDULER_FILE}",
    ]
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


def _resources(spec: LLMServerSpec) -> dict[str, Any]:
    requests = {key: str(value) for key, value in spec.resources.requests.items()}
    limits = {key: str(value) for key, value in spec.resources.limits.items()}
    if spec.resources.gpus > 0:
        # Extended resources are requested through limits (requests must equal them).
        requests[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
        limits[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def image(spec: LLMServerSpec, images: Images) -> str:
    return spec.engine.image or (images.gpu if spec.resources.gpus > 0 else images.cpu)


def build_deployment(owner: Owner, spec: LLMServerSpec, images: Images) -> dict[str, Any]:
    n = names(owner)
    health = {"httpGet": {"path": "/health", "port": HTTP_PORT_NAME}}
    env = [
        {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": n["secret"], "key": TOKEN_KEY}}},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
    ]
    hf = spec.model.hugging_face
    if hf is not None and hf.token_secret_ref is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": hf.token_secret_ref.name, "key": hf.token_secret_ref.key}},
            }
        )
    env += [{"name": var.name, "value": var.value} for var in spec.engine.env]

    mounts = [
        {"name": "scheduler", "mountPath": SCHEDULER_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "scheduler", "configMap": {"name": n["configmap"]}},
        {"name": "cache", "emptyDir": {}},
    ]
    init_containers: list[dict[str, Any]] = []
    if spec.model.pvc is not None:
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": spec.model.pvc.claim_name, "readOnly": True}}
        )
    elif spec.model.url is not None:
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        volumes.append({"name": "model", "emptyDir": {}})
        fetch = ["python", "-m", "trail_operator.fetch_model", "--url", spec.model.url.url, "--dest", MODELS_DIR]
        if spec.model.url.sha256:
            fetch += ["--sha256", spec.model.url.sha256]
        init_containers.append(
            {
                "name": "fetch-model",
                "image": image(spec, images),
                "command": fetch,
                "volumeMounts": [{"name": "model", "mountPath": MODELS_DIR}],
                "terminationMessagePolicy": "FallbackToLogsOnError",  # the reason shows in the pod's status
            }
        )
    if spec.engine.tensor_parallel_size > 1:
        # NCCL between tensor-parallel workers needs more shared memory than the default 64 MiB.
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
        "terminationMessagePolicy": "FallbackToLogsOnError",  # why a crash-looping server exits
        # Model loading (and downloads) can take many minutes: the startup probe allows 30.
        "startupProbe": {**health, "periodSeconds": 10, "failureThreshold": 180},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 10, "failureThreshold": 6},
    }
    resources = _resources(spec)
    if resources:
        container["resources"] = resources

    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes, "terminationGracePeriodSeconds": 60}
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

    meta = _metadata(owner, n["deployment"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec},
        },
    }


def build_all(
    owner: Owner, spec: LLMServerSpec, images: Images, *, token: str, generation: int, probe_data: bytes | None
) -> list[dict[str, Any]]:
    """Everything one LLMServer owns, in the order to apply it (what pods mount first)."""
    return [
        build_secret(owner, token),
        build_configmap(owner, spec, generation, probe_data),
        build_service(owner),
        build_deployment(owner, spec, images),
    ]
