"""The core and the probe stay free of engine and cluster dependencies."""

import subprocess
import sys

FORBIDDEN = ("vllm", "kubernetes", "kopf")


def test_core_and_probe_import_neither_vllm_nor_kubernetes():
    """Importing them in a fresh interpreter pulls in none of the heavy stacks."""
    code = (
        "import sys, trail_scheduler.core, trail_scheduler.probe; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
