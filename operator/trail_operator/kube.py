"""A small async Kubernetes API client (httpx) for the objects the operator owns.

kopf does the watching; this does the reads and writes of the reconcile loop. It uses
the credentials the official client resolves (in-cluster service account, else
kubeconfig), so it talks to whatever server kopf talks to, kmock in tests included.
Writes are JSON merge patches (what kmock emulates and every API server accepts).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import httpx

# kind → (API path prefix, plural); only what the operator touches.
KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Secret": ("/api/v1", "secrets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "LLMServer": ("/apis/trail.dev/v1alpha1", "llmservers"),
}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP code (0: not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Credentials:
    host: str
    verify: ssl.SSLContext | bool
    cert: tuple[str, str] | None
    configuration: Any  # kubernetes.client.Configuration, for token refresh


def _load_credentials() -> _Credentials:
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    verify: ssl.SSLContext | bool = bool(configuration.verify_ssl)
    if configuration.verify_ssl and configuration.ssl_ca_cert:
        verify = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    cert = (configuration.cert_file, configuration.key_file) if configuration.cert_file else None
    return _Credentials(configuration.host, verify, cert, configuration)


class Kube:
    def __init__(self, client: httpx.AsyncClient, credentials: _Credentials | None = None) -> None:
        self._client = client
        self._credentials = credentials

    @classmethod
    def from_environment(cls, timeout: float = 30.0) -> Kube:
        creds = _load_credentials()
        client = httpx.AsyncClient(base_url=creds.host, verify=creds.verify, cert=creds.cert, timeout=timeout)
        return cls(client, creds)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self) -> dict[str, str]:
        if self._credentials is None:
            return {}
        configuration = self._credentials.configuration
        if configuration.refresh_api_key_hook is not None:
            configuration.refresh_api_key_hook(configuration)  # rotated service-account tokens
        token = configuration.get_api_key_with_prefix("authorization")
        return {"Authorization": token} if token else {}

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        prefix, plural = KINDS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        try:
            response = await self._client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as error:
            raise KubeError(0, f"{method} {path}: {error!r}") from error
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise KubeError(response.status_code, f"{method} {path}: {response.status_code} {message}")
        return response.json()

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self.path(kind, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Objects whose labels include ``labels`` (filtered here too: not every server
        honours labelSelector, kmock does not)."""
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        reply = await self._call("GET", self.path(kind, namespace), params={"labelSelector": selector})
        return [
            item
            for item in reply.get("items") or []
            if labels.items() <= ((item.get("metadata") or {}).get("labels") or {}).items()
        ]

    async def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", self.path(kind, namespace), json=body)

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        return await self._call("PATCH", self.path(kind, namespace, name, subresource), json=patch, headers=MERGE_PATCH)
