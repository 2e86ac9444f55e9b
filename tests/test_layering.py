"""Imports run downward only: the layers of docs/architecture.md, enforced.

Every import in the source is read from its syntax tree, including imports inside
functions: a lazy import is still a dependency, so it is no way around a layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "trail_contract": REPO / "contract" / "trail_contract",
    "trail_scheduler": REPO / "scheduler" / "trail_scheduler",
    "trail_operator": REPO / "operator" / "trail_operator",
}
# package -> the project packages it may import: the engine and the operator share the
# contract, and nothing depends back on either of them.
DEPENDS_ON = {
    "trail_contract": {"trail_contract"},
    "trail_scheduler": {"trail_contract", "trail_scheduler"},
    "trail_operator": {"trail_contract", "trail_operator"},
}

# unit -> layer; a unit may import its own modules and units of lower layers only.
LAYERS = {
    "trail_contract.errors": 0,  # the error base the command line reports
    "trail_contract.wire": 0,  # the wire models' base and error wording (pydantic only)
    "trail_contract.settings": 1,  # the scheduler settings model
    "trail_contract.probe_format": 1,  # a probe header, read safely (stdlib only: the operator uses it)
    "trail_contract.admin_api": 2,  # the admin API's wire models and the settings file
    "trail_contract.admin_client": 3,  # the admin API's one client (httpx + the contract)
    "trail_scheduler.length_mix": 3,  # chat traffic's answer lengths (stdlib only: every `trail` parser reads it)
    "trail_scheduler.core": 3,
    "trail_operator": 4,  # the control plane, on the contract alone
    "trail_scheduler.assets": 4,  # the bundled model and data (packages only)
    "trail_scheduler.predictors": 4,  # the shipped predictor files
    "trail_scheduler.probe": 4,
    "trail_scheduler.vllm": 5,  # the engine adapter
    "trail_scheduler.server": 6,
    "trail_scheduler.training": 7,
    "trail_scheduler.bench": 7,
    "trail_scheduler.cli": 8,  # the `trail` command (the operator adds its own through an entry point)
    "trail_scheduler": 8,  # the package's own __init__
}


def unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "trail_operator":
        return "trail_operator"
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def imports() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every project import."""
    found = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from trail_scheduler import predictors` imports trail_scheduler.predictors
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] in PACKAGES:
                        found.append((unit(module), unit(name), f"{path.relative_to(REPO)}:{node.lineno}"))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {u for pair in imports() for u in pair[:2]}
    assert units <= set(LAYERS), sorted(units - set(LAYERS))


def test_imports_run_downward_only() -> None:
    upward = [
        f"{where}: {source} (layer {LAYERS[source]}) imports {target} (layer {LAYERS[target]})"
        for source, target, where in imports()
        if source != target and LAYERS[target] >= LAYERS[source]
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("package", sorted(DEPENDS_ON))
def test_packages_import_only_what_they_depend_on(package) -> None:
    """The contract imports neither side; the engine package never imports the operator, nor
    the operator the engine package."""
    stray = [
        f"{where}: {target}"
        for source, target, where in imports()
        if source.split(".")[0] == package and target.split(".")[0] not in DEPENDS_ON[package]
    ]
    assert not stray, stray


def test_the_operator_subcommand_comes_through_its_entry_point() -> None:
    from trail_scheduler.cli import build_parser

    args = build_parser().parse_args(["operator", "run", "--namespace", "ns"])
    assert (args.command, args.operator_command, args.namespace) == ("operator", "run", ["ns"])


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (["trail_operator.handlers", "trail_operator.cli"], ["numpy", "torch", "vllm", "fastapi"]),
        (
            ["trail_contract.admin_api", "trail_contract.admin_client", "trail_contract.probe_format"],
            ["numpy", "torch", "vllm", "fastapi", "kopf", "kubernetes"],
        ),
    ],
    ids=["operator", "contract"],
)
def test_light_units_stay_light(modules, forbidden) -> None:
    """Importing them in a fresh interpreter pulls in none of the heavy stacks."""
    code = (
        f"import sys, {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_trail_command_parses_without_the_engine_stack() -> None:
    """The operator image runs `trail operator run` without numpy or torch: building the whole
    command's parser (every subcommand's flags) must not need them."""
    code = (
        "import sys; from trail_scheduler.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'numpy', 'torch', 'vllm', 'fastapi'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
