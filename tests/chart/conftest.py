"""Fixtures for the chart tests (helpers live in chart_helpers.py)."""

from __future__ import annotations

import pytest
from chart_helpers import Helm, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(find_helm())


@pytest.fixture(scope="session")
def default_manifests(helm: Helm) -> list[dict]:
    return helm.template()
