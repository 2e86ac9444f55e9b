"""The chart ships the CRDs of crds/ (the single source of truth) byte for byte."""

from __future__ import annotations

from chart_helpers import CHART, REPO

SOURCE = REPO / "crds"
COPY = CHART / "crds"
FIX = f"copy them again: cp {SOURCE}/*.yaml {COPY}/"


def test_chart_crds_are_identical_to_the_source_crds():
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, f"no CRDs in {SOURCE}"
    assert sorted(copy) == sorted(source), f"the chart's CRD files differ from crds/: {FIX}"
    for name, content in source.items():
        assert copy[name] == content, f"{COPY / name} differs from {SOURCE / name}: {FIX}"


def test_helm_installs_the_crd_it_ships(helm):
    crds = [m for m in helm.template(include_crds=True) if m["kind"] == "CustomResourceDefinition"]
    assert [c["metadata"]["name"] for c in crds] == ["llmservers.trail.dev"]
    assert crds[0]["spec"]["names"]["shortNames"] == ["llms"]
