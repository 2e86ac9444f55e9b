"""The objects an LLMServer owns beside its pods and settings (the admin-token Secret, the
Service, the PodDisruptionBudget, the cache claim, the InferencePool, the NetworkPolicy),
and :func:`build_all`, everything it owns in the order to apply it.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

from trail_contract.admin_api import ConfigUpdate
from trail_operator.layout import (
    ADMIN_PORT,
    HTTP_PORT,
    HTTP_PORT_NAME,
    TOKEN_KEY,
    Owner,
    metadata,
    names,
    selector_labels,
)
from trail_operator.pod import Images, build_deployment
from trail_operator.scheduler_settings import build_configmap
from trail_operator.spec import LLMServerSpec

INFERENCE_POOL_API = "inference.networking.k8s.io/v1"


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


def build_secret(owner: Owner, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(owner, names(owner)["secret"]),
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
        "metadata": metadata(owner, names(owner)["service"]),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            # Only the OpenAI port: the admin API is reached pod by pod, never through here.
            "ports": [{"name": HTTP_PORT_NAME, "port": HTTP_PORT, "targetPort": HTTP_PORT_NAME, "protocol": "TCP"}],
        },
    }


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
        "metadata": metadata(owner, names(owner)["cache"]),
        "spec": claim_spec,
    }


def build_disruption_budget(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """Voluntary evictions (drains, cluster-autoscaler scale-downs) take at most
    ``disruptionBudget.maxUnavailable`` ready pods at a time. ``AlwaysAllow``: a pod that is
    not ready (crash-looping, still loading the model) serves nothing, so it never blocks a drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, names(owner)["poddisruptionbudget"]),
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_inference_pool(owner: Owner, spec: LLMServerSpec) -> dict[str, Any]:
    """The Gateway API Inference Extension pool of the server pods: a gateway asks the
    endpoint picker it names which pod's OpenAI port gets each request."""
    picker = spec.routing.inference_pool.endpoint_picker
    return {
        "apiVersion": INFERENCE_POOL_API,
        "kind": "InferencePool",
        "metadata": metadata(owner, names(owner)["inferencepool"]),
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
        "metadata": metadata(owner, names(owner)["networkpolicy"]),
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
    settings: ConfigUpdate,
    probe_data: bytes | None,
    peer: Peer | None = None,
) -> list[dict[str, Any]]:
    """Everything one LLMServer owns, in the order to apply it (what pods mount first; the
    NetworkPolicy, when ``peer`` is given, before the pods it guards). ``settings`` is the
    settings file, generation stamped (:func:`~trail_operator.scheduler_settings.desired_settings`)."""
    objects = [
        build_secret(owner, token),
        build_configmap(owner, spec, settings, probe_data),
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
