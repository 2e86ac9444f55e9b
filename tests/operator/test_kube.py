"""trail_operator.kube against kmock's API server emulation: the calls the operator makes."""

from __future__ import annotations

import pytest
from conftest import REPO
from kopf_harness import LLMS, NS, declare_resources, new_server, obj, write_kubeconfig
from lightkube import AsyncClient, KubeConfig
from test_operator import free_port

from trail_operator import kube


@pytest.fixture
async def client(kmock, tmp_path, monkeypatch):
    declare_resources(kmock)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url))))
    client = kube.connect()
    yield client
    await client.close()


def configmap(name, labels):
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "data": {"k": "v"},
    }


async def test_get_create_patch_and_list(client, kmock):
    assert await kube.get(client, "ConfigMap", NS, "a") is None
    created = await kube.create(client, configmap("a", {"app": "x"}))
    assert created["metadata"]["name"] == "a" and created["data"] == {"k": "v"}
    await kube.create(client, configmap("b", {"app": "y"}))
    patched = await kube.patch(client, "ConfigMap", NS, "a", {"data": {"k": None, "j": "w"}})
    assert patched["data"] == {"j": "w"}
    assert obj(kmock, "v1/configmaps", "a")["data"] == {"j": "w"}
    assert [item["metadata"]["name"] for item in await kube.list_labelled(client, "ConfigMap", NS, {"app": "x"})] == [
        "a"
    ]


async def test_status_patch_and_errors(client, kmock):
    kmock.objects[LLMS, NS, "s"] = new_server("s", {"replicas": 1})
    await kube.patch(client, "LLMServer", NS, "s", {"status": {"replicas": 1}}, status=True)
    assert obj(kmock, LLMS, "s")["status"] == {"replicas": 1}
    with pytest.raises(kube.KubeError) as raised:
        await kube.patch(client, "ConfigMap", NS, "missing", {"data": {}})
    assert raised.value.status == 404
    await kube.create(client, configmap("a", {}))
    with pytest.raises(kube.KubeError) as raised:
        await kube.create(client, configmap("a", {}))
    assert raised.value.status == 409


async def test_in_cluster_credentials_over_tls(tmp_path, monkeypatch):
    """What the operator's pod uses: the service account's token and CA files and
    KUBERNETES_SERVICE_HOST/PORT, over TLS (the journey's emulator and CA)."""
    monkeypatch.syspath_prepend(str(REPO / "tests" / "journey"))
    from apiserver import ApiServer, make_ca, serve

    cert, key = make_ca(tmp_path, "127.0.0.1")
    (tmp_path / "token").write_text("service-account-token")
    (tmp_path / "namespace").write_text(NS)
    api = ApiServer()
    api.objects["v1/configmaps", NS, "a"] = configmap("a", {})
    port = free_port()
    runner = await serve(api, "127.0.0.1", port, cert, key)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    client = AsyncClient(KubeConfig.from_service_account(tmp_path))
    try:
        assert (await kube.get(client, "ConfigMap", NS, "a"))["data"] == {"k": "v"}
    finally:
        await client.close()
        await runner.cleanup()
    [request] = [r for r in api if r.name == "a"]
    assert request.headers["Authorization"] == "Bearer service-account-token"
