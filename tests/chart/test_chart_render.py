"""`helm lint` and `helm template` of the chart, with the real helm binary, for the
default values and every documented combination (charts/trail-operator/ci/), and
every rendered manifest validated offline against the Kubernetes schemas."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
from chart_helpers import CHART, CI_VALUES, KUBE_VERSION, NAMESPACE, by_kind, one

# Kinds of CRDs that kubernetes-validate has no schema for; each has its own test.
CUSTOM_KINDS = {"ServiceMonitor"}
COMBINATIONS = [None, *CI_VALUES]


def combo_id(values: Path | None) -> str:
    return "defaults" if values is None else values.name.removesuffix("-values.yaml")


def validate_offline(manifest: dict) -> None:
    """Strict validation (unknown fields are errors) against the Kubernetes schemas."""
    name = f"{manifest['kind']}/{manifest['metadata']['name']}"
    try:
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        pytest.fail(f"{name} is not valid Kubernetes {KUBE_VERSION}: {path}: {error.message}")


def test_there_are_documented_combinations():
    assert len(CI_VALUES) >= 4, f"expected the documented values files in {CHART / 'ci'}"


@pytest.mark.parametrize("values", COMBINATIONS, ids=combo_id)
def test_helm_lint_is_clean(helm, values):
    output = helm.lint(*([values] if values else []))
    assert "1 chart(s) linted, 0 chart(s) failed" in output, output


@pytest.mark.parametrize("values", COMBINATIONS, ids=combo_id)
def test_every_rendered_manifest_is_valid_kubernetes(helm, values):
    manifests = helm.template(*([values] if values else []), include_crds=True)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "CustomResourceDefinition"} <= kinds, kinds
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        validate_offline(manifest)


def test_offline_validation_catches_a_broken_manifest(default_manifests):
    deployment = json.loads(json.dumps(one(default_manifests, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = {"no": 1}
    with pytest.raises(pytest.fail.Exception, match="imagePullPolicy"):
        validate_offline(deployment)
    deployment = json.loads(json.dumps(one(default_manifests, "Deployment")))
    deployment["spec"]["replicaz"] = 1
    with pytest.raises(pytest.fail.Exception, match="replicaz"):
        validate_offline(deployment)


def test_only_expected_kinds_lack_a_kubernetes_schema(helm):
    """Every kind is validated: those without a built-in schema are exactly CUSTOM_KINDS."""
    manifests = helm.template(*CI_VALUES)
    unknown = set()
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError:
            unknown.add(manifest["kind"])
    assert unknown == CUSTOM_KINDS


def test_everything_lands_in_the_release_namespace(default_manifests):
    for manifest in default_manifests:
        if manifest["kind"] in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert "namespace" not in manifest["metadata"]
        else:
            assert manifest["metadata"]["namespace"] == NAMESPACE, manifest["metadata"]


# --- the operator Deployment --------------------------------------------------------


def operator_container(manifests: list[dict]) -> dict:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return pod["containers"][0]


def test_operator_runs_non_root_with_a_read_only_root_filesystem(default_manifests):
    pod = one(default_manifests, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(default_manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_operator_has_resource_requests_and_probes(default_manifests):
    container = operator_container(default_manifests)
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    port = next(p for p in container["ports"] if p["name"] == "health")["containerPort"]
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in container["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_command_and_default_images(default_manifests):
    container = operator_container(default_manifests)
    assert container["command"] == ["trail", "operator", "run"]
    assert not any(a.startswith("--namespace") for a in container["args"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {
        "TRAIL_DEFAULT_GPU_IMAGE": "ghcr.io/trail-k8s/trail-server-gpu:0.1.0",
        "TRAIL_DEFAULT_CPU_IMAGE": "ghcr.io/trail-k8s/trail-server-cpu:0.1.0",
        "TRAIL_NETWORK_POLICY": "true",
        "TRAIL_OPERATOR_NAMESPACE": None,  # from the pod (fieldRef)
        "TRAIL_OPERATOR_POD_LABELS": '{"app.kubernetes.io/instance":"trail","app.kubernetes.io/name":"trail-operator"}',
    }
    assert container["image"] == "ghcr.io/trail-k8s/trail-operator:0.1.0"


def test_values_reach_the_deployment(helm):
    manifests = helm.template(CHART / "ci" / "full-values.yaml")
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(manifests)
    assert container["image"] == "registry.example.com/trail/trail-operator:0.1.0-custom"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert "--namespace=llm-serving" in container["args"]
    assert "--liveness=http://0.0.0.0:9090/healthz" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRAIL_NETWORK_POLICY"] == "false"
    assert env["TRAIL_DEFAULT_GPU_IMAGE"] == "registry.example.com/trail/trail-server-gpu:0.1.0"
    assert env["TRAIL_DEFAULT_CPU_IMAGE"] == "registry.example.com/trail/trail-server-cpu:0.1.0"
    assert container["resources"]["limits"]["cpu"] == "1"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    template_meta = deployment["spec"]["template"]["metadata"]
    assert template_meta["annotations"] == {"example.com/team": "ml-platform"}
    assert template_meta["labels"]["example.com/tier"] == "control-plane"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_meta["labels"].items()


def test_several_watched_namespaces_become_several_flags(helm):
    container = operator_container(helm.template(CHART / "ci" / "namespaced-values.yaml"))
    assert [a for a in container["args"] if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_two_peered_replicas_and_a_rollout_that_keeps_one_up(helm, default_manifests):
    deployment = one(default_manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert f"--peering={deployment['metadata']['name']}" in operator_container(default_manifests)["args"]
    paused = one(helm.template(CHART / "ci" / "paused-values.yaml"), "Deployment")
    assert paused["spec"]["replicas"] == 0


def test_kopfs_peering_crds_unless_they_exist_already(helm, default_manifests):
    crds = {c["metadata"]["name"]: c for c in by_kind(default_manifests, "CustomResourceDefinition")}
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds.values())
    without = by_kind(helm.template(set_values=("peering.installCRDs=false",)), "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in without] == ["llmservers.trail.dev"]


def test_existing_service_account_is_used_not_created(helm):
    manifests = helm.template(CHART / "ci" / "existing-serviceaccount-values.yaml")
    assert by_kind(manifests, "ServiceAccount") == []
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trail-operator-preexisting"
    for binding in by_kind(manifests, "ClusterRoleBinding") + by_kind(manifests, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "trail-operator-preexisting", "namespace": NAMESPACE}
        ]


def test_created_service_account_is_the_one_the_pod_uses(default_manifests):
    account = one(default_manifests, "ServiceAccount")
    pod = one(default_manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_notes_tell_the_user_what_to_apply_next(helm):
    notes = helm.notes()
    assert "kubectl apply -f examples/" in notes
    assert "kubectl get llms -w" in notes
    assert "kubectl patch llms" in notes
    assert "all namespaces" in notes
    namespaced = helm.notes(CHART / "ci" / "namespaced-values.yaml")
    assert "in these namespaces only: team-a, team-b" in namespaced
    assert "paused" in helm.notes(CHART / "ci" / "paused-values.yaml")
