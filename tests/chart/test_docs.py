"""The Kubernetes quickstart (docs/kubernetes.md) and the chart's NOTES.txt name real
files, objects and ports."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from chart_helpers import CHART, REPO

from trail_operator import layout

DOC = REPO / "docs" / "kubernetes.md"
NOTES = CHART / "templates" / "NOTES.txt"
CPU_EXAMPLE = REPO / "examples" / "llmserver-cpu-smollm2.yaml"


@pytest.mark.parametrize("text_file", [DOC, NOTES], ids=["quickstart", "notes"])
def test_every_repository_path_it_names_exists(text_file):
    paths = set(re.findall(r"\b((?:examples|charts|images)/[\w./-]*\w)", text_file.read_text()))
    assert paths, f"{text_file} names no files"
    for path in paths:
        assert (REPO / path).exists(), f"{text_file.name} names {path}, which does not exist"


@pytest.mark.parametrize("text_file", [DOC, NOTES], ids=["quickstart", "notes"])
def test_commands_match_the_cpu_example_and_the_operators_service(text_file):
    example = yaml.safe_load(CPU_EXAMPLE.read_text())
    name = example["metadata"]["name"]
    text = text_file.read_text()
    assert f"kubectl port-forward svc/{name} {layout.HTTP_PORT}:{layout.HTTP_PORT}" in text
    assert f'"model": "{example["spec"]["model"]["servedModelName"]}"' in text
    patch = re.search(rf"kubectl patch llms {name} --type merge -p '([^']+)'", text)
    assert patch, "the retune command is missing"
    assert json.loads(patch.group(1)) == {"spec": {"scheduler": {"c": 0.5}}}


def test_quickstart_release_names_the_deployment_it_waits_for(helm):
    text = DOC.read_text()
    install = re.search(r"helm install (\S+) charts/trail-operator --namespace (\S+)", text)
    assert install, "the quickstart must install the chart"
    release, namespace = install.groups()
    rendered = yaml.safe_load_all(helm.run("template", release, str(CHART), "-n", namespace))
    [deployment] = [m for m in rendered if m and m["kind"] == "Deployment"]
    assert f"kubectl -n {namespace} rollout status deployment/{deployment['metadata']['name']}" in text
