"""Every example is accepted and every invalid manifest rejected, by the CRD's schema and
CEL rules (as the API server would) and by the operator's own spec parser."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import EXAMPLES, INVALID, REPO, header, load
from crd_validation import check

from trail_operator.crd import load_crd
from trail_operator.spec import SpecError, parse_spec


def test_there_are_examples_and_invalid_manifests() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"llmserver-cpu-smollm2.yaml", "llmserver-llama3-8b-gpu.yaml", "llmserver-llama3-8b-tp2.yaml"} <= names
    assert len(INVALID) >= 10


def test_crd_is_a_valid_customresourcedefinition() -> None:
    import kubernetes_validate

    crd = load_crd()
    kubernetes_validate.validate(crd, "1.30", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Ready", "Replicas", "Policy", "C", "Age"}
    assert crd["spec"]["names"]["shortNames"] == ["llms"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(path) -> None:
    manifest = load(path)
    assert check(manifest) == []
    parse_spec(manifest["spec"])  # and the operator can build from it


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_manifests_are_rejected_by_the_named_rule(path) -> None:
    expected = header(path, "rejected-by")
    assert expected, f"{path.name} must say which rule rejects it (# rejected-by: ...)"
    errors = check(load(path))
    assert errors, f"{path.name} was accepted by the CRD"
    assert any(expected in error for error in errors), f"{path.name}: expected {expected!r} in {errors}"


@pytest.mark.parametrize("path", [p for p in INVALID if header(p, "operator") is None], ids=lambda p: p.name)
def test_operator_rejects_what_the_crd_rejects(path) -> None:
    """The operator re-checks the rules (kmock and a CRD without rules do not enforce them)."""
    with pytest.raises(SpecError) as error:
        parse_spec(load(path)["spec"])
    message, expected = str(error.value), header(path, "rejected-by")
    fields = [f.removeprefix("spec.") for f in re.findall(r"[A-Za-z]+(?:\.[A-Za-z0-9]+)+", expected)]
    assert message.startswith("spec")
    assert expected in message or any(f in message for f in fields), f"{message!r} does not name {expected!r}"


def test_defaults_come_from_the_crd() -> None:
    spec = parse_spec({"model": {"bundled": True}})
    assert (spec.replicas, spec.scheduler.policy.value, spec.scheduler.c) == (1, "trail", 0.8)
    assert (spec.engine.tensor_parallel_size, spec.resources.gpus, spec.resources.gpu_resource_name) == (
        1,
        0,
        "nvidia.com/gpu",
    )


def test_integer_c_is_accepted_like_the_api_server_does() -> None:
    manifest = load(REPO / "examples" / "llmserver-cpu-smollm2.yaml")
    manifest["spec"]["scheduler"]["c"] = 2
    assert check(manifest) == []


def test_kubernetes_only_cel_is_refused_by_the_harness(monkeypatch) -> None:
    import crd_validation

    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self == oldSelf"}]}
    with pytest.raises(NotImplementedError):
        crd_validation._cel_errors(schema, {}, "")


def test_examples_parse_as_yaml_documents() -> None:
    for path in EXAMPLES:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert len(docs) == 1 and docs[0]["kind"] == "LLMServer"
