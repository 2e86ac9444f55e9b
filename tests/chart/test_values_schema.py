"""values.schema.json: bad values are refused by helm itself with a message that says
which value and why; the values follow `helm create`'s conventions."""

from __future__ import annotations

import json

import pytest
import yaml
from chart_helpers import CHART, HelmError

BAD_VALUES = [
    # (--set-json value, the words helm's error must contain)
    ("replicaCount=-1", ["/replicaCount", "minimum: got -1, want 0"]),
    ("replicaCount=6", ["/replicaCount", "maximum: got 6, want 5"]),
    ("replicaCount=1.5", ["/replicaCount", "integer"]),
    ('image.pullPolicy="Sometimes"', ["/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"]),
    ('image.repository=""', ["/image/repository", "minLength"]),
    ('watchNamespaces=["Team_A"]', ["/watchNamespaces/0", "'Team_A' does not match pattern"]),
    ('watchNamespaces=["a","a"]', ["/watchNamespaces", "items at 0 and 1 are equal"]),
    ('serverImages.gpu=""', ["/serverImages/gpu", "minLength"]),
    ('serverImages.cpu="my image:1"', ["/serverImages/cpu", "does not match pattern"]),
    ("healthPort=70000", ["/healthPort", "maximum"]),
    ('metrics.serviceMonitor.interval="30 seconds"', ["/metrics/serviceMonitor/interval", "pattern"]),
    ('imagePullSecrets=["registry-credentials"]', ["/imagePullSecrets/0", "object"]),
    ("replicas=1", ["additional properties 'replicas' not allowed"]),
    ('serviceAccount.create="yes"', ["/serviceAccount/create", "boolean"]),
]


@pytest.mark.parametrize("value,expected", BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_bad_values_are_refused_with_a_clear_message(helm, value, expected):
    with pytest.raises(HelmError) as caught:
        helm.template(set_values=(value,))
    message = caught.value.stderr
    assert "values don't meet the specifications of the schema" in message, message
    for words in expected:
        assert words in message, message


def test_servicemonitor_without_the_prometheus_operator_is_refused_clearly(helm):
    with pytest.raises(HelmError) as caught:
        helm.template(set_values=("metrics.serviceMonitor.enabled=true",), monitoring=False)
    assert "no monitoring.coreos.com/v1 ServiceMonitor kind" in caught.value.stderr
    assert "metrics.serviceMonitor.enabled=false" in caught.value.stderr


# The keys `helm create` puts in values.yaml that apply to an operator Deployment.
HELM_CREATE_KEYS = [
    "replicaCount",
    "image",
    "imagePullSecrets",
    "nameOverride",
    "fullnameOverride",
    "serviceAccount",
    "podAnnotations",
    "podLabels",
    "podSecurityContext",
    "securityContext",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
]


def test_values_follow_helm_create_conventions(helm, tmp_path):
    helm.run("create", str(tmp_path / "reference"))
    reference = yaml.safe_load((tmp_path / "reference" / "values.yaml").read_text())
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in HELM_CREATE_KEYS:
        assert key in reference, f"helm create no longer has {key}; update HELM_CREATE_KEYS"
        assert key in ours, f"values.yaml lacks the conventional key {key}"
        assert type(ours[key]) is type(reference[key]), key
    assert set(reference["image"]) <= set(ours["image"])
    assert {"create", "name", "annotations"} <= set(ours["serviceAccount"])


def test_every_default_value_is_described_by_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(ours) <= set(schema["properties"]), set(ours) - set(schema["properties"])
