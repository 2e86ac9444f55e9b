"""Shared by the chart tests: the real `helm` binary, rendering, manifest look-ups.

`helm` must sit next to the interpreter running the tests (the venv's bin folder);
`make env` puts it there with tools/install_k8s_tools.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trail-operator"
# The documented values combinations (chart-testing's convention: ci/*-values.yaml).
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# What `helm template` would learn from a cluster that runs the Prometheus operator.
MONITORING_API = "monitoring.coreos.com/v1/ServiceMonitor"
# The Kubernetes version the manifests are validated against (the bundled kubectl's).
KUBE_VERSION = "1.35"
RELEASE = "trail"
NAMESPACE = "trail-system"


class HelmError(AssertionError):
    """helm exited non-zero; the message carries its stderr."""

    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]):
        self.stderr = result.stderr
        super().__init__(f"`helm {' '.join(args)}` exited {result.returncode}:\n{result.stderr}{result.stdout}")


@dataclass(frozen=True)
class Helm:
    binary: Path

    def run(self, *args: str) -> str:
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise HelmError(list(args), result)
        return result.stdout

    def template(
        self,
        *values_files: Path,
        set_values: tuple[str, ...] = (),
        monitoring: bool = True,
        include_crds: bool = False,
    ) -> list[dict]:
        """Rendered manifests (as dicts) of the chart with these values."""
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
        if monitoring:
            args += ["--api-versions", MONITORING_API]
        if include_crds:
            args.append("--include-crds")
        for path in values_files:
            args += ["--values", str(path)]
        for item in set_values:
            args += ["--set-json", item]
        return [doc for doc in yaml.safe_load_all(self.run(*args)) if doc]

    def notes(self, *values_files: Path) -> str:
        """NOTES.txt as `helm install` prints it (a client-side dry run)."""
        args = ["install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
        for path in values_files:
            args += ["--values", str(path)]
        output = self.run(*args)
        assert "NOTES:" in output, output
        return output.split("NOTES:", 1)[1]

    def lint(self, *values_files: Path) -> str:
        args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
        for path in values_files:
            args += ["--values", str(path)]
        return self.run(*args)


def find_helm() -> Path:
    binary = Path(sys.executable).parent / "helm"
    if not binary.is_file():
        pytest.fail(
            f"no helm binary at {binary}: install it next to this interpreter with "
            f"`{sys.executable} tools/install_k8s_tools.py {binary.parent}` (or `make env`)",
            pytrace=False,
        )
    return binary


def by_kind(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[dict], kind: str) -> dict:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]
