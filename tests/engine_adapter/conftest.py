"""Every test here runs on both of TRAIL's scheduler classes."""

from __future__ import annotations

import pytest

from tests.engine_adapter.harness import Engine, build_scheduler, write_probe
from trail_scheduler.vllm.scheduler import TrailAsyncScheduler, TrailScheduler


@pytest.fixture(params=[TrailScheduler, TrailAsyncScheduler], ids=["sync", "async"])
def make_engine(request):
    """``make_engine(**build_scheduler's keywords)``: a fresh scheduler of the class under test."""
    return lambda **kwargs: Engine(build_scheduler(request.param, **kwargs))


@pytest.fixture
def probe_file(tmp_path):
    """A probe file for the bundled model: (path, sha256)."""
    path = tmp_path / "probe.safetensors"
    return path, write_probe(path)
