"""Run the real operator (kopf + our handlers) against kmock's Kubernetes emulation.

kmock stands in for the API server only. What it does not do, and how the tests
compensate: no schema/CEL validation (test_schema.py covers it; the operator re-checks
specs), no defaulting (the operator applies the CRD defaults itself), no
metadata.generation bookkeeping (tests set and bump it as the API server would), no
garbage collection by owner references (tests assert the owner references), no
Deployment controller (tests write Deployment status and Pod objects by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import yaml

from trail_operator import crd, handlers  # noqa: F401  (registers the handlers)
from trail_operator.peering import Peering

LLMS = "trail.dev/v1alpha1/llmservers"
NS = "ml"


def declare_resources(server: kmock.KubernetesEmulator) -> None:
    server.resources.load_bundled()
    names = crd.load_crd()["spec"]["names"]
    server.resources[LLMS] = kmock.ResourceInfo(
        kind=names["kind"],
        singular=names["singular"],
        shortnames=set(names["shortNames"]),
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        subresources=set(crd.version_entry()["subresources"]),
        namespaced=True,
    )
    server.resources["inference.networking.k8s.io/v1/inferencepools"] = kmock.ResourceInfo(
        kind="InferencePool",
        singular="inferencepool",
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        namespaced=True,
    )
    for kind, plural, namespaced in (
        ("ClusterKopfPeering", "clusterkopfpeerings", False),
        ("KopfPeering", "kopfpeerings", True),
    ):
        server.resources[f"kopf.dev/v1/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            verbs={"get", "list", "watch", "create", "patch", "delete"},
            namespaced=namespaced,
        )


def write_kubeconfig(path: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NS}}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def running_operator(peering: Peering | None = None) -> AsyncIterator[None]:
    """The operator as `trail operator run` starts it (all namespaces; with ``--peering``
    when ``peering`` is given), in this loop."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    joined = {} if peering is None else {"peering_name": peering.name, "identity": peering.identity}
    task = asyncio.create_task(
        kopf.operator(
            clusterwide=True,
            standalone=peering is None,
            priority=None if peering is None else peering.priority,
            stop_flag=stop,
            ready_flag=ready,
            memo=kopf.Memo(peering=peering),
            **joined,
        )
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def new_server(name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": str(uuid.uuid4()),
            "generation": generation,
            "resourceVersion": "1",
        },  # kopf tests it in JSON patches; kmock sets none
        "spec": spec,
    }


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns a truthy value (or raise with the last error)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return result
        except (KeyError, TypeError, AssertionError, IndexError) as error:
            last = error
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")


def obj(server: kmock.KubernetesEmulator, resource: str, name: str) -> dict[str, Any] | None:
    try:  # NB: `in` does not parse "group/version/plural" strings; indexing does
        found = server.objects[resource, NS, name]
    except KeyError:
        return None
    return None if found.deleted else dict(found.raw)


def condition(server: kmock.KubernetesEmulator, name: str, type_: str) -> dict[str, Any] | None:
    status = (obj(server, LLMS, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def operator_reads(server: kmock.KubernetesEmulator, name: str) -> int:
    """How many times the operator has read LLMServer ``name``: once per reconcile pass."""
    return sum(
        1
        for r in requests_to(server, "llmservers", "GET")
        if r.name == name and r.headers.get("User-Agent", "").startswith("python-httpx2/")
    )


async def passes(server: kmock.KubernetesEmulator, name: str, count: int = 2) -> None:
    """Wait until ``count`` more reconcile passes of ``name`` have run (resyncs, at least)."""
    start = operator_reads(server, name)
    await eventually(lambda: operator_reads(server, name) >= start + count, what=f"{count} more passes")


def requests_to(server: kmock.KubernetesEmulator, plural: str, method: str | None = None) -> list[Any]:
    return [
        r
        for r in server
        if r.resource is not None
        and r.resource.plural == plural
        and (method is None or str(r.method.value if hasattr(r.method, "value") else r.method).upper() == method)
    ]
