"""The admission webhook end to end: the operator (kopf, our handlers) started in this loop
against kmock, serving its webhook over HTTPS with a self-signed certificate, and sent
AdmissionReview requests in the admission.k8s.io/v1 shape the API server sends."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import socket
import ssl
import struct
import uuid

import httpx
import pytest
from conftest import REPO, load
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kopf_harness import NS, declare_resources, running_operator, write_kubeconfig

from trail_operator import webhook
from trail_operator.spec import parse_spec

CPU_SPEC = load(REPO / "examples" / "llmserver-cpu-smollm2.yaml")["spec"]


def self_signed(directory) -> None:
    """tls.crt and tls.key for 127.0.0.1, as the chart's Secret holds them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trail-operator-webhook")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def probe_file(hidden_size: int, layer: int) -> bytes:
    """A probe file's bytes as far as its header goes: one tensor and the trail metadata."""
    trail = {"format_version": 1, "model": "m", "hidden_size": hidden_size, "layer": layer}
    header = {
        "fc1.bias": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "__metadata__": {"trail": json.dumps(trail)},
    }
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 4


@pytest.fixture
async def admission(kmock, tmp_path, monkeypatch):
    """POST an LLMServer spec to the webhook as the API server would (the operator running):
    the AdmissionReview's response."""
    declare_resources(kmock)
    path = str(write_kubeconfig(tmp_path / "kubeconfig", str(kmock.url)))
    monkeypatch.setenv("KUBECONFIG", path)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", path)
    self_signed(tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TRAIL_WEBHOOK_CERT_DIR", str(tmp_path))
    monkeypatch.setenv("TRAIL_WEBHOOK_PORT", str(port))
    kmock.objects["v1/configmaps", NS, "good-probe"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "good-probe", "namespace": NS},
        "binaryData": {"probe.safetensors": base64.b64encode(probe_file(576, 10)).decode()},
    }
    kmock.objects["v1/configmaps", NS, "other-model-probe"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "other-model-probe", "namespace": NS},
        "binaryData": {"probe.safetensors": base64.b64encode(probe_file(4096, 10)).decode()},
    }

    async def review(spec, operation="CREATE", old_spec=None):
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=tmp_path / "tls.crt")) as client:
            obj = {"apiVersion": "trail.dev/v1alpha1", "kind": "LLMServer", "spec": spec}
            obj["metadata"] = {"name": "s", "namespace": NS, "uid": str(uuid.uuid4())}
            uid = str(uuid.uuid4())
            gvk = {"group": "trail.dev", "version": "v1alpha1", "kind": "LLMServer"}
            gvr = {"group": "trail.dev", "version": "v1alpha1", "resource": "llmservers"}
            request = {
                "uid": uid,
                "kind": gvk,
                "resource": gvr,
                "requestKind": gvk,
                "requestResource": gvr,
                "name": "s",
                "namespace": NS,
                "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": obj,
                "oldObject": {**obj, "spec": old_spec} if operation == "UPDATE" else None,
                "dryRun": False,
            }
            body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
            url = f"https://127.0.0.1:{port}/{webhook.HANDLER_ID}"
            for _ in range(100):  # the server starts with the operator, shortly after it is ready
                try:
                    reply = await client.post(url, json=body)
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.1)
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
            assert answer["response"]["uid"] == uid
            return answer["response"]

    return review


def with_(**engine) -> dict:
    spec = copy.deepcopy(CPU_SPEC)
    spec["engine"] = {**spec.get("engine", {}), **engine}
    return spec


def with_probe(name: str, **probe) -> dict:
    spec = copy.deepcopy(CPU_SPEC)
    spec["scheduler"] = {
        **spec.get("scheduler", {}),
        "probe": {"configMapKeyRef": {"name": name, "key": "probe.safetensors"}, **probe},
    }
    return spec


async def test_a_valid_llmserver_is_allowed(admission) -> None:
    async with running_operator():  # in the test's task: kopf cancels what is left in the loop when it stops
        assert (await admission(CPU_SPEC))["allowed"] is True
        assert (await admission(with_probe("good-probe"), "UPDATE", old_spec=CPU_SPEC))["allowed"] is True
        assert (await admission(with_probe("missing-configmap")))["allowed"] is True  # the operator reports it later


async def test_an_update_that_leaves_the_spec_alone_is_allowed(admission) -> None:
    """Metadata writes (the operator's annotations, its finalizer's removal) to an object whose
    spec was stored before the webhook was on; a spec edit is still checked."""
    bad = with_(extraArgs=["-tp", "4"])
    async with running_operator():
        assert (await admission(bad, "UPDATE", old_spec=bad))["allowed"] is True
        assert (await admission(bad, "UPDATE", old_spec=CPU_SPEC))["allowed"] is False


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (with_(extraArgs=["-tp", "4"]), "spec.engine.extraArgs: [0] '-tp': sets tensor_parallel_size"),
        (with_(extraArgs=["--tensor_parallel_size=4"]), "sets tensor_parallel_size, which the operator owns"),
        (with_(extraArgs=["--admin-p=9000"]), "[0] '--admin-p=9000': abbreviates --admin-port"),
        (with_(extraArgs=["--sched=x"]), "abbreviates --scheduler-cls"),
        (with_(extraArgs=["--no-such-flag"]), "unrecognized arguments: --no-such-flag"),
        (with_(extraArgs=["--enforce-eager", "other-model"]), "[1] 'other-model': a value that follows no flag"),
        (with_(tensorParallelSize=2), "engine.tensorParallelSize (2) must not exceed resources.gpus"),
        (
            with_probe("other-model-probe"),
            "spec.scheduler.probe: the probe reads hidden size 4096, the bundled model has 576",
        ),
        (with_probe("good-probe", layer=30), "the probe reads layer 30, the bundled model has 30 layers"),
    ],
    ids=[
        "alias",
        "underscore",
        "abbreviated",
        "abbreviated-trail",
        "unknown",
        "stray-value",
        "spec-error",
        "probe-hidden",
        "probe-layer",
    ],
)
async def test_bad_llmservers_are_denied_with_the_reason(admission, spec, reason) -> None:
    async with running_operator():
        response = await admission(spec)
    assert response["allowed"] is False
    assert reason in response["status"]["message"], response["status"]["message"]
    assert response["status"]["code"] == 422


def test_probe_problem_skips_models_of_unknown_shape() -> None:
    spec = parse_spec(with_probe("p") | {"model": {"huggingFace": {"id": "org/m"}}})
    assert webhook.probe_problem(spec, probe_file(4096, 10)) is None
    assert "not a safetensors file" in webhook.probe_problem(spec, b"junk-bytes")
