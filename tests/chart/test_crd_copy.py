"""The chart ships the CRDs of crds/ (the single source of truth) byte for byte, as
templates: `helm upgrade` applies a changed CRD, `helm uninstall` keeps it."""

from __future__ import annotations

from chart_helpers import CHART, REPO, by_kind

SOURCE = REPO / "crds"
COPY = CHART / "files" / "crds"
FIX = f"copy them again: cp {SOURCE}/*.yaml {COPY}/"
KEEP = "helm.sh/resource-policy"


def test_chart_crds_are_identical_to_the_source_crds():
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, f"no CRDs in {SOURCE}"
    assert sorted(copy) == sorted(source), f"the chart's CRD files differ from crds/: {FIX}"
    for name, content in source.items():
        assert copy[name] == content, f"{COPY / name} differs from {SOURCE / name}: {FIX}"


def test_helm_installs_and_upgrades_the_crd_and_uninstall_keeps_it(default_manifests):
    """A template (not crds/, which Helm never upgrades), annotated so uninstall leaves it."""
    assert not (CHART / "crds").exists(), "Helm would install crds/ once and never upgrade it"
    [crd] = [c for c in by_kind(default_manifests, "CustomResourceDefinition") if c["spec"]["group"] == "trail.dev"]
    assert crd["metadata"]["name"] == "llmservers.trail.dev"
    assert crd["spec"]["names"]["shortNames"] == ["llms"]
    assert crd["metadata"]["annotations"][KEEP] == "keep"


def test_the_crd_can_be_left_to_someone_else(helm):
    crds = by_kind(helm.template(set_values=("crds.install=false",)), "CustomResourceDefinition")
    assert [c for c in crds if c["spec"]["group"] == "trail.dev"] == []
