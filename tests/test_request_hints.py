"""The API server's control of TRAIL's per-request hints, in-process over a recording engine
client (the real engine's side: tests/engine/test_serve.py, whose server accepts hints)."""

from __future__ import annotations

import asyncio

import pytest
from vllm.sampling_params import SamplingParams

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
    def estimate_one(self, text: str) -> float:
        return float(len(text))


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
    expected = {"top_k_seed": 3} | ({} if predictor is None else {"trail_prompt_estimate": len("Write a poem.")})
    assert seen == expected


def test_without_hints_or_a_predictor_nothing_is_added():
    engine = RecordingEngine()
    attach_request_hints(engine, None)
    assert served(engine, None) is None


def test_a_server_that_accepts_client_hints_keeps_them_over_its_own_estimate():
    engine = RecordingEngine()
    attach_request_hints(engine, Predictor(), accept_client_hints=True)
    assert served(engine, CLIENT_HINTS) == CLIENT_HINTS
    assert served(engine, {})["trail_prompt_estimate"] == len("Write a poem.")


def test_trail_serve_refuses_client_hints_unless_asked():
    from trail_scheduler.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.accept_client_hints is False
    assert build_parser().parse_args(["serve", "--accept-client-hints"]).accept_client_hints is True
