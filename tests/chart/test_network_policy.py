"""The chart tells the operator whether to make NetworkPolicies and who it is, and the
policies the operator then builds let exactly the rendered operator pods reach the admin port."""

from __future__ import annotations

import pytest
from chart_helpers import NAMESPACE, one

from trail_operator.layout import Owner
from trail_operator.owned import Peer, build_network_policy


def operator_env(manifests: list[dict]) -> tuple[dict, dict]:
    deployment = one(manifests, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return deployment, {var["name"]: var for var in container["env"]}


def peer_from(env: dict, monkeypatch) -> Peer | None:
    """What the operator reads at start, the namespace resolved as the kubelet would."""
    assert env["TRAIL_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    monkeypatch.setenv("TRAIL_NETWORK_POLICY", env["TRAIL_NETWORK_POLICY"]["value"])
    monkeypatch.setenv("TRAIL_OPERATOR_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("TRAIL_OPERATOR_POD_LABELS", env["TRAIL_OPERATOR_POD_LABELS"]["value"])
    return Peer.from_env()


def test_on_by_default_and_the_policy_admits_the_operators_pods(default_manifests, monkeypatch):
    deployment, env = operator_env(default_manifests)
    peer = peer_from(env, monkeypatch)
    assert peer is not None and peer.namespace == NAMESPACE
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert peer.labels and peer.labels.items() <= pod_labels.items()
    policy = build_network_policy(Owner("demo", "ml", "uid"), peer)
    admitted = policy["spec"]["ingress"][1]["from"][0]
    assert admitted["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert admitted["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}


@pytest.mark.parametrize("enabled", [False, True])
def test_the_value_reaches_the_operator(helm, monkeypatch, enabled):
    _, env = operator_env(helm.template(set_values=(f"networkPolicy.enabled={str(enabled).lower()}",)))
    assert (peer_from(env, monkeypatch) is not None) is enabled


def test_a_non_boolean_is_refused(helm):
    from chart_helpers import HelmError

    with pytest.raises(HelmError, match="networkPolicy"):
        helm.template(set_values=('networkPolicy.enabled="yes"',))
