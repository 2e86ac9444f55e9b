"""The chart's admission webhook (templates/webhook.yaml), rendered by the real helm: off by
default; when on, the API server calls the operator's webhook port through a Service,
over TLS it can verify (the generated CA in caBundle, or cert-manager's injection)."""

from __future__ import annotations

import base64

import pytest
from chart_helpers import NAMESPACE, HelmError, by_kind, one
from cryptography import x509
from test_chart_render import operator_container, validate_offline

ON = ('webhook={"enabled": true}',)


def test_off_by_default(default_manifests):
    assert not by_kind(default_manifests, "ValidatingWebhookConfiguration")
    assert "TRAIL_WEBHOOK_CERT_DIR" not in {e["name"] for e in operator_container(default_manifests)["env"]}


def test_on_the_api_server_reaches_the_operator_over_verified_tls(helm):
    manifests = helm.template(set_values=ON)
    for manifest in manifests:
        validate_offline(manifest)
    config = one(manifests, "ValidatingWebhookConfiguration")
    [hook] = config["webhooks"]
    assert (hook["sideEffects"], hook["failurePolicy"], hook["timeoutSeconds"]) == ("None", "Ignore", 5)
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "apiGroups": ["trail.dev"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["llmservers"],
            "scope": "Namespaced",
        }
    ]
    assert "namespaceSelector" not in hook  # every namespace, like the operator
    target = hook["clientConfig"]["service"]
    assert (target["namespace"], target["path"], target["port"]) == (NAMESPACE, "/validate", 443)

    service = next(s for s in by_kind(manifests, "Service") if s["metadata"]["name"] == target["name"])
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    container = operator_container(manifests)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRAIL_WEBHOOK_PORT"] == "9443"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["TRAIL_WEBHOOK_CERT_DIR"])
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])

    secret = one(manifests, "Secret")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    serving = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    serving.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"{target['name']}.{NAMESPACE}.svc" in names


def test_watched_namespaces_limit_the_webhook_too(helm):
    manifests = helm.template(set_values=(*ON, 'watchNamespaces=["ml", "research"]'))
    [hook] = one(manifests, "ValidatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "research"]}
    ]


def test_cert_manager_issues_the_certificate_and_injects_the_ca(helm):
    manifests = helm.template(set_values=('webhook={"enabled": true, "certManager": {"enabled": true}}',))
    config = one(manifests, "ValidatingWebhookConfiguration")
    certificate = one(manifests, "Certificate")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}"
    )
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert not by_kind(manifests, "Secret")  # cert-manager writes it
    issuer = one(manifests, "Issuer")
    assert certificate["spec"]["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer"}
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "webhook-tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in pod["volumes"]

    own = helm.template(
        set_values=(
            'webhook={"enabled": true, "certManager": {"enabled": true, '
            '"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}',
        )
    )
    assert not by_kind(own, "Issuer")
    assert one(own, "Certificate")["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


@pytest.mark.parametrize("value", ['{"failurePolicy": "Maybe"}', '{"timeoutSeconds": 60}', '{"port": 80}'])
def test_bad_webhook_values_are_refused(helm, value):
    with pytest.raises(HelmError, match="webhook"):
        helm.template(set_values=(f"webhook={value}",))
