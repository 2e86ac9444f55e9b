"""Pure manifest builders: an LLMServer (name, namespace, uid, parsed spec) → the
Deployment, Service, ConfigMap, Secret, PodDisruptionBudget (and NetworkPolicy,
InferencePool, cache PersistentVolumeClaim) it owns.

No I/O here: the handlers fetch what these need (the admin token, the probe bytes of a
ConfigMap probe source, the operator's default images and settings) and pass it in.
Scheduler settings live only in the ConfigMap, never in the pod template, so a change to
``spec.scheduler`` cannot roll the pods (except the hosts pods may fetch probes from,
``--probe-host``, a start-up flag). Nor does the admin token: pods read it from the
mounted Secret, so a new token reaches running pods without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lightkube.utils.quantity import parse_quantity

from trail_contract.admin_api import ConfigUpdate, read_settings_file, settings_file_text
from trail_contract.settings import SETTING_KEYS
from trail_operator.crd import API_VERSION, KIND
from trail_operator.spec import LLMServerSpec

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
TOKEN_DIR = "/var/run/secrets/trail"  # the admin-token Secret, mounted whole (kubelet refreshes it)
TOKEN_MODE = 0o440  # owner and group (fsGroup) read; nobody else
# The images' user (images/*/Dockerfile); the pods run as it, Pod Security "restricted".
RUN_AS = 10001
FETCH_DEADLINE_SECONDS = 7200  # model.url: the whole download and unpacking

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
class Peer:
    """Who may reach the server pods' admin port when NetworkPolicies are on: the operator's
    pods (its namespace and pod labels, passed by the chart)."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Peer | None:
        """From the chart's env; None when NetworkPolicies are off (``TRAIL_NETWORK_POLICY``)."""
        if os.environ.get("TRAIL_NETWORK_POLICY", "").lower() != "true":
            return None
        namespace, labels = os.environ.get("TRAIL_OPERATOR_NAMESPACE"), os.environ.get("TRAIL_OPERATOR_POD_LABELS")
        if not namespace or not labels:
            raise ValueError("TRAIL_NETWORK_POLICY=true needs TRAIL_OPERATOR_NAMESPACE and TRAIL_OPERATOR_POD_LABELS")
        return cls(namespace, json.loads(labels))


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
        "networkpolicy": owner.name,
        "poddisruptionbudget": owner.name,
        "inferencepool": owner.name,
        "cache": f"{owner.name}-cache",
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


def build_cache_claim(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """The cache's claim: the first pod downloads the weights into it, every other replica
    and restart finds them there (huggingface_hub's file locks keep concurrent first pods
    from downloading the same file twice, on file systems whose locks work across nodes)."""
    claim = spec.cache.persistent_volume_claim
    assert claim is not None
    claim_spec: dict[str, Any] = {
        "accessModes": [claim.access_mode],
        "resources": {"requests": {"storage": spec.cache.size}},
    }
    if claim.storage_class_name:
        claim_spec["storageClassName"] = claim.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(owner, names(owner)["cache"]),
        "spec": claim_spec,
    }


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

    meta = _metadata(owner, n["deployment"])
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


def build_disruption_budget(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """Voluntary evictions (drains, cluster-autoscaler scale-downs) take at most
    ``disruptionBudget.maxUnavailable`` ready pods at a time. ``AlwaysAllow``: a pod that is
    not ready (crash-looping, still loading the model) serves nothing, so it never blocks a drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, names(owner)["poddisruptionbudget"]),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


INFERENCE_POOL_API = "inference.networking.k8s.io/v1"


def build_inference_pool(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """The Gateway API Inference Extension pool of the server pods: a gateway asks the
    endpoint picker it names which pod's OpenAI port gets each request."""
    picker = spec.routing.inference_pool.endpoint_picker
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": _metadata(owner, names(owner)["inferencepool"]),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "targetPorts": [{"number": HTTP_PORT}],
            "endpointPickerRef": {
                "kind": "Service",
                "name": picker.name or f"{owner.name}-epp",
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        },
    }


def build_network_policy(owner: Owner, peer: Peer) -> dict[str, Any]:
    """Ingress to the server pods: the OpenAI port from anywhere, the admin port from the
    operator's pods only (every other port: nobody)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, names(owner)["networkpolicy"]),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": peer.namespace}},
                            "podSelector": {"matchLabels": dict(peer.labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": ADMIN_PORT}],
                },
            ],
        },
    }


def build_all(
    owner: Owner,
    spec: LLMServerSpec,
    images: Images,
    *,
    token: str,
    generation: int,
    probe_data: bytes | None,
    peer: Peer | None = None,
) -> list[dict[str, Any]]:
    """Everything one LLMServer owns, in the order to apply it (what pods mount first; the
    NetworkPolicy, when ``peer`` is given, before the pods it guards)."""
    objects = [
        build_secret(owner, token),
        build_configmap(owner, spec, generation, probe_data),
        build_service(owner),
        build_disruption_budget(owner, spec),
    ]
    if spec.cache.persistent_volume_claim is not None:
        objects.append(build_cache_claim(owner, spec))
    if spec.routing.inference_pool.enabled:
        objects.append(build_inference_pool(owner, spec))
    if peer is not None:
        objects.append(build_network_policy(owner, peer))
    return [*objects, build_deployment(owner, spec, images)]
