"""The one emulated piece of the journey: kmock's Kubernetes API server, over TLS.

kmock stores objects as plain JSON and merges patches as given. A real API server
does a little more that our operator, kubectl and the node stand-in rely on, so this
subclass adds exactly that, as a real server would:
- ``metadata.uid``, ``resourceVersion``, ``creationTimestamp`` and ``generation`` on
  create; ``generation`` bumped when a write changes ``spec``;
- a ``/status`` write changes only ``status``, a write to the object never changes it
  (when the resource has a status subresource: kopf's peering objects have none);
  ``/scale`` reads and writes ``spec.replicas`` through a ``Scale`` object;
- discovery names the core group ``v1``; list replies carry ``kind``/``apiVersion``
  (kubectl refuses them otherwise) and honour equality and existence ``labelSelector``s.

It is served over HTTPS with a CA of its own, so pods reach it the way they reach a
cluster's API server: through ``KUBERNETES_SERVICE_HOST`` and the service-account files.
What it still does not do (schemas and CEL, admission, namespaces as objects, RBAC, the
controllers) is said in docs/kubernetes.md; the node stand-in plays the controllers the
journey needs.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import enums, rendering


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what the emulator does to a stored object)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _labels_match(obj: dict[str, Any], selector: str | None) -> bool:
    """Equality (``key=value``) and existence (``key``) terms, the ones kubectl and the operator send."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, equals, value = term.partition("=")
        if key.strip() not in labels or (equals and labels[key.strip()] != value.lstrip("=").strip()):
            return False
    return True


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with the bookkeeping a real API server does (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)

    def _stored(self, request: rendering.Request) -> dict[str, Any] | None:
        try:
            found = self.objects[request.resource, request.namespace, request.name]
        except KeyError:
            return None
        return None if found.deleted else dict(found.raw)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == enums.action.CREATE and request.resource.plural == "customresourcedefinitions":
                self.serve_crd(request.data)
            if request.action == enums.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta["generation"] = 1
                meta["resourceVersion"] = str(next(self._versions))
            elif request.action == enums.action.UPDATE and request.name is not None:
                current = self._stored(request)
                if current is not None:
                    data = request.data  # the request is frozen: edit its body in place
                    if request.subresource == "status":
                        status = data.get("status")
                        data.clear()
                        data["status"] = status
                    elif request.subresource != "scale" and "status" in self.resources[request.resource].subresources:
                        data.pop("status", None)  # (without a status subresource, status is written like spec)
                    data.setdefault("metadata", {})
                    for key in ("uid", "generation", "creationTimestamp"):
                        data["metadata"].pop(key, None)
                    merged = merge(current, data)
                    generation = int(current.get("metadata", {}).get("generation") or 1)
                    if merged.get("spec") != current.get("spec"):
                        generation += 1
                    data["metadata"]["generation"] = generation
                    data["metadata"]["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)

    def serve_crd(self, crd: dict[str, Any]) -> None:
        """Serve the resource a CRD declares, before anyone hears of the CRD (as a real server does)."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                shortnames=set(names.get("shortNames", [])),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources=set(version.get("subresources") or {}),
                namespaced=spec["scope"] == "Namespaced",
            )

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        reply = await super()._serve_version(request)
        reply["groupVersion"] = reply["groupVersion"].lstrip("/")  # the core group is "v1", not "/v1"
        return reply

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        return _as_scale(request, await super()._serve_fetch(request))

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return _as_scale(request, await super()._serve_update(request))

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        reply = await super()._serve_list(request)
        info = self.resources[request.resource]
        selector = request.params.get("labelSelector")
        reply["items"] = [item for item in reply["items"] if _labels_match(item, selector)]
        reply["kind"] = f"{info.kind}List"
        group = request.resource.group
        reply["apiVersion"] = f"{group}/{request.resource.version}" if group else request.resource.version
        return reply


def _as_scale(request: rendering.Request, obj: dict[str, Any]) -> dict[str, Any]:
    """The ``scale`` subresource's view (``autoscaling/v1`` Scale) of an object whose
    replicas live at ``.spec.replicas``, as the LLMServer CRD and Deployments declare."""
    if request.subresource != "scale":
        return obj
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {key: meta[key] for key in ("name", "namespace", "uid", "resourceVersion") if key in meta},
        "spec": {"replicas": int((obj.get("spec") or {}).get("replicas") or 0)},
        "status": {
            "replicas": int((obj.get("status") or {}).get("replicas") or 0),
            "selector": (obj.get("status") or {}).get("selector", ""),
        },
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_ca(folder: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for the API server's address (what a cluster's CA issues)."""
    cert, key = folder / "ca.crt", folder / "apiserver.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kubernetes",
            "-addext",
            f"subjectAltName=IP:{host},DNS:kubernetes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def serve(api: ApiServer, host: str, port: int, cert: Path, key: Path) -> aiohttp.web.BaseRunner:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    # Watches never end by themselves: at shutdown, a second for requests in flight, not aiohttp's 60.
    runner = aiohttp.web.ServerRunner(aiohttp.web.Server(api), shutdown_timeout=1.0)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, host, port, ssl_context=context).start()
    return runner


async def wait_forever() -> None:
    await asyncio.Event().wait()
