"""The chart's RBAC is exactly the operator's least-privilege rules
(trail_operator.rbac.PERMISSIONS): nothing more, nothing missing, in either mode."""

from __future__ import annotations

import pytest
from chart_helpers import CHART, NAMESPACE, by_kind, one

from trail_operator.crd import load_crd
from trail_operator.rbac import PERMISSIONS

NAMESPACED = CHART / "ci" / "namespaced-values.yaml"
# Scope of the resources the operator may name (Kubernetes API reference); a new one
# must be classified here, because a Role cannot grant a cluster-scoped resource.
CLUSTER_SCOPED = {
    "customresourcedefinitions",
    "namespaces",
    "nodes",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "storageclasses",
    "clusterkopfpeerings",
}
NAMESPACED_SCOPED = {
    "deployments",
    "services",
    "configmaps",
    "secrets",
    "pods",
    "events",
    "leases",
    "networkpolicies",
    "poddisruptionbudgets",
    "kopfpeerings",
    "inferencepools",
    "persistentvolumeclaims",
}


def is_cluster_scoped(resource: str) -> bool:
    base = resource.split("/")[0]
    if base == load_crd()["spec"]["names"]["plural"]:
        return load_crd()["spec"]["scope"] == "Cluster"
    assert base in CLUSTER_SCOPED | NAMESPACED_SCOPED, f"classify the scope of {base!r} in this test"
    return base in CLUSTER_SCOPED


def split(rules: list[dict]) -> tuple[list[dict], list[dict]]:
    namespaced = [r for r in rules if not any(is_cluster_scoped(x) for x in r["resources"])]
    cluster = [r for r in rules if all(is_cluster_scoped(x) for x in r["resources"])]
    assert len(namespaced) + len(cluster) == len(rules), "a rule mixes scopes"
    return namespaced, cluster


def triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_cluster_wide_role_is_exactly_the_operators_permissions(default_manifests):
    role = one(default_manifests, "ClusterRole")
    assert role["rules"] == PERMISSIONS
    assert by_kind(default_manifests, "Role") == []


def test_namespaced_mode_grants_the_same_rules_per_namespace(helm):
    manifests = helm.template(NAMESPACED)
    namespaced_rules, cluster_rules = split(PERMISSIONS)
    roles = by_kind(manifests, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == namespaced_rules
    # Cluster-scoped resources (kopf's CRD discovery) need a ClusterRole even here,
    # and it grants nothing namespaced.
    assert one(manifests, "ClusterRole")["rules"] == cluster_rules
    assert triples(namespaced_rules) | triples(cluster_rules) == triples(PERMISSIONS)


@pytest.mark.parametrize("values", [None, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_bindings_give_the_roles_to_the_operators_service_account(helm, values):
    manifests = helm.template(*([values] if values else []))
    account = one(manifests, "ServiceAccount")["metadata"]["name"]
    roles = {
        (r["kind"], r["metadata"]["name"], r["metadata"].get("namespace"))
        for r in by_kind(manifests, "ClusterRole") + by_kind(manifests, "Role")
    }
    bindings = by_kind(manifests, "ClusterRoleBinding") + by_kind(manifests, "RoleBinding")
    assert len(bindings) == len(roles)
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        assert (ref["kind"], ref["name"], binding["metadata"].get("namespace")) in roles


DELETABLE = {
    ("", "secrets"),  # replacing an admin-token Secret that is not as written (rotation)
    ("inference.networking.k8s.io", "inferencepools"),  # an owned pool, when routing.inferencePool turns off
    ("", "persistentvolumeclaims"),  # the cache's claim, when cache.persistentVolumeClaim is removed
}


def test_no_wildcards_and_no_deletes_but_the_admin_secrets_and_inference_pools():
    for group, resource, verb in triples(PERMISSIONS):
        assert "*" not in (group, resource, verb)
        assert verb not in {"deletecollection", "escalate", "bind", "impersonate"}, (resource, verb)
        assert verb != "delete" or (group, resource) in DELETABLE, (resource, verb)


def test_secrets_cannot_be_listed_watched_or_changed():
    """The operator reads Secrets by name only: it cannot enumerate the cluster's Secrets."""
    verbs = {verb for group, resource, verb in triples(PERMISSIONS) if resource == "secrets"}
    assert verbs == {"get", "create", "delete"}
