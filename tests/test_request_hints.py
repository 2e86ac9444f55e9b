"""The API server's control of TRAIL's per-request hints, in-process over a recording engine
client (the real engine's side: tests/engine/test_serve.py, whose server accepts hints)."""

from __future__ import annotations

import asyncio

import pytest
from vllm.sampling_params import SamplingParams

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.server.serve import attach_request_hints

CLIENT_HINTS = {"trail_prompt_estimate": 1.0, "trail_oracle_length": 1, "trail_collect_id": "x", "top_k_seed": 3}


class RecordingEngine:
    """The part of vLLM's engine client that ``generate`` wraps: records what reaches the engine."""

    tokenizer = None

    def __init__(self) -> None:
        self.seen: list[dict | None] = []

    async def generate(self, prompt, sampling_params, request_id, *args, **kwargs):
        self.seen.append(sampling_params.extra_args)
        yield "output"


class Predictor:
    bins = LengthBins.uniform(2, 100.0)

    def predict_one(self, text: str) -> tuple[float, list[float]]:
        return float(len(text)), [0.25, 0.75]


SENT_DISTRIBUTION = {"edges": [0.0, 50.0, 100.0], "probabilities": [0.25, 0.75]}


def served(engine, extra_args) -> dict | None:
    params = SamplingParams(max_tokens=4, extra_args=dict(extra_args) if extra_args else None)

    async def run():
        return [output async for output in engine.generate("Write a poem.", params, "r1")]

    assert asyncio.run(run()) == ["output"]
    return engine.seen[-1]


@pytest.mark.parametrize("predictor", [None, Predictor()], ids=["no-predictor", "predictor"])
def test_a_clients_hints_are_dropped_and_its_other_extra_args_kept(predictor):
    engine = RecordingEngine()
    attach_request_hints(engine, predictor)
    seen = served(engine, CLIENT_HINTS)
    estimated = {"trail_prompt_estimate": len("Write a poem."), "trail_prompt_distribution": SENT_DISTRIBUTION}
    expected = {"top_k_seed": 3} | ({} if predictor is None else estimated)
    assert seen == expected


def test_without_hints_or_a_predictor_nothing_is_added():
    engine = RecordingEngine()
    attach_request_hints(engine, None)
    assert served(engine, None) is None


def test_a_server_that_accepts_client_hints_keeps_them_over_its_own_estimate():
    engine = RecordingEngine()
    attach_request_hints(engine, Predictor(), accept_client_hints=True)
    assert served(engine, CLIENT_HINTS) == CLIENT_HINTS  # the client's estimate, and no distribution
    own = served(engine, {})
    assert own["trail_prompt_estimate"] == len("Write a poem.")
    assert own["trail_prompt_distribution"] == SENT_DISTRIBUTION


def test_trail_serve_refuses_client_hints_unless_asked():
    from trail_scheduler.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.accept_client_hints is False
    assert build_parser().parse_args(["serve", "--accept-client-hints"]).accept_client_hints is True
