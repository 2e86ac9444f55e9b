"""What one LLMServer's objects agree on: their names, labels and owner reference, and
the ports and paths that one object names and another serves or mounts.

The manifest builders (``pod``, ``scheduler_settings``, ``owned``) are pure: the handlers
fetch what they need (the admin token, a ConfigMap probe's bytes, the default images) and
pass it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trail_operator.crd import API_VERSION, KIND

HTTP_PORT = 8000
ADMIN_PORT = 8001
HTTP_PORT_NAME = "http"
ADMIN_PORT_NAME = "admin"  # the retune client finds each pod's admin API by this name
CONTAINER_NAME = "server"
SCHEDULER_DIR = "/etc/trail/scheduler"
SCHEDULER_FILE = "scheduler.json"
MODELS_DIR = "/models"
TOKEN_KEY = "token"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SERVER = "trail.dev/llmserver"
APP_NAME = "trail-server"
MANAGER = "trail-operator"


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


def metadata(owner: Owner, name: str) -> dict[str, Any]:
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
