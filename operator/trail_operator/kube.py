"""The operator's Kubernetes reads and writes, through lightkube's async client.

kopf does the watching; this does the reads and writes of a reconcile pass. The
credentials are lightkube's ``KubeConfig.from_env()``: the in-cluster service account
(token file, re-read when the kubelet rotates it; CA file; KUBERNETES_SERVICE_HOST/PORT),
else $KUBECONFIG or ~/.kube/config; the same server kopf talks to, kmock in tests included.
Objects cross this module as plain dicts, which the pure builders make and compare;
every failure, refused or unreached, is one ``KubeError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Pod, Secret, Service
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from trail_operator import crd

LLMServer = create_namespaced_resource(crd.GROUP, crd.VERSION, crd.KIND, crd.PLURAL)
InferencePool = create_namespaced_resource("inference.networking.k8s.io", "v1", "InferencePool", "inferencepools")
# kopf's peering objects (trail_operator.peering reads who leads from them).
ClusterKopfPeering = create_global_resource("kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings")
KopfPeering = create_namespaced_resource("kopf.dev", "v1", "KopfPeering", "kopfpeerings")
RESOURCES = {
    "ConfigMap": ConfigMap,
    "Secret": Secret,
    "Service": Service,
    "Pod": Pod,
    "Deployment": Deployment,
    "NetworkPolicy": NetworkPolicy,
    "PodDisruptionBudget": PodDisruptionBudget,
    "PersistentVolumeClaim": PersistentVolumeClaim,
    "LLMServer": LLMServer,
    "InferencePool": InferencePool,
    "ClusterKopfPeering": ClusterKopfPeering,
    "KopfPeering": KopfPeering,
}


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP code (0: the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except httpx2.HTTPStatusError as error:  # lightkube's ApiError when the reply is a JSON Status
        code = error.response.status_code
        message = error.status.message if isinstance(error, ApiError) else error.response.text
        raise KubeError(code, f"{what}: {code} {message}") from error
    except httpx2.HTTPError as error:
        raise KubeError(0, f"{what}: {error!r}") from error


def connect(timeout: float = 30.0) -> AsyncClient:
    return AsyncClient(KubeConfig.from_env(), timeout=httpx2.Timeout(timeout))


async def get(client: AsyncClient, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist (``namespace`` None: a cluster-scoped kind)."""
    try:
        with _errors(f"get {kind} {namespace}/{name}"):
            return (await client.get(RESOURCES[kind], name, namespace=namespace)).to_dict()
    except KubeError as error:
        if error.status == 404:
            return None
        raise


async def list_labelled(client: AsyncClient, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Objects whose labels include ``labels`` (filtered here too: kmock ignores labelSelector)."""
    with _errors(f"list {kind} in {namespace}"):
        items = [item.to_dict() async for item in client.list(RESOURCES[kind], namespace=namespace, labels=labels)]
    return [item for item in items if labels.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()]


async def create(client: AsyncClient, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    namespace = meta.get("namespace")  # None: a cluster-scoped kind
    with _errors(f"create {obj['kind']} {namespace or ''}/{meta['name']}"):
        return (await client.create(codecs.from_dict(obj), namespace=namespace)).to_dict()


async def patch(
    client: AsyncClient, kind: str, namespace: str, name: str, body: dict[str, Any], *, status: bool = False
) -> dict[str, Any]:
    """A JSON merge patch of the object (of its /status with ``status``)."""
    resource = RESOURCES[kind].Status if status else RESOURCES[kind]
    with _errors(f"patch {kind} {namespace}/{name}{'/status' if status else ''}"):
        reply = await client.patch(resource, name, body, namespace=namespace, patch_type=PatchType.MERGE)
    return reply.to_dict()


async def delete(client: AsyncClient, kind: str, namespace: str, name: str) -> None:
    """Delete the object; one already gone is fine."""
    try:
        with _errors(f"delete {kind} {namespace}/{name}"):
            await client.delete(RESOURCES[kind], name, namespace=namespace)
    except KubeError as error:
        if error.status != 404:
            raise
