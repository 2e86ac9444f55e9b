"""Shared fixtures for the operator tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# The operator reads its resync interval at import (kopf registers the timer then): a short
# one makes resync passes happen within a test, so the tests see what they would write.
os.environ.setdefault("TRAIL_RESYNC_SECONDS", "0.5")
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def header(path: Path, key: str) -> str | None:
    """A ``# key: value`` line from the top of an invalid manifest."""
    for line in path.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return None


@pytest.fixture
def cpu_example() -> dict[str, Any]:
    return load(REPO / "examples" / "llmserver-cpu-smollm2.yaml")


def _client_without_keep_alive(url: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(force_close=True))


@pytest.fixture
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    """The tests' own client to the API stand-in closes each connection after its request.

    kopf, stopping, waits up to 5 s for every task started after it, and an idle keep-alive
    connection's handler in the stand-in is one: without this every operator run ends 5 s late.
    """
    return {**kmock_options, "client_fct": _client_without_keep_alive}
