"""TRAIL's runner mixin in-process over a stand-in for vLLM's model runner: what happens
when the probe itself fails on a worker (a device error, a bad kernel).

The stand-in has only what the mixin reads in one step (the step's scheduled requests,
their rows in the hidden states, the sampled output); the mixin's state is set as its
``load_model`` sets it. The probe's failure is real: a probe for another hidden size
raises in its first matmul, as any exception in the probe's forward would.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.v1.outputs import ModelRunnerOutput

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, load_probe, save_probe
from trail_scheduler.vllm.runner import RunnerUpdate, trail_runner_class

HIDDEN = 16
LAYER = 3


class StandInRunner:
    """One decode step of the given requests (one row each) per ``execute_model``."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.requests: dict[str, SimpleNamespace] = {}

    def execute_model(self, scheduler_output, *args, **kwargs):
        ids = list(scheduler_output.scheduled_cached_reqs.req_ids)
        generators = getattr(scheduler_output, "generators", {})
        self.input_batch = SimpleNamespace(req_ids=ids, num_reqs=len(ids), generators=generators)
        discarded = getattr(scheduler_output, "discarded", set())
        self.discard_request_mask = SimpleNamespace(np=np.array([i in discarded for i in range(len(ids))]))
        self.query_start_loc = SimpleNamespace(np=np.arange(len(ids) + 1))
        self.execute_model_state = SimpleNamespace(
            scheduler_output=scheduler_output, aux_hidden_states=[torch.randn(len(ids), HIDDEN)]
        )

    def sample_tokens(self, *args, **kwargs):
        ids = self.input_batch.req_ids
        # As vLLM's sampler and _bookkeeping_sync: seeded rows draw from their own generator,
        # then the generator of a row whose token is dropped (a prompt still being prefilled
        # in chunks) is rewound, which only CUDA generators support.
        for generator in self.input_batch.generators.values():
            torch.randint(0, 2**31, (1,), generator=generator)
        for i in np.nonzero(self.discard_request_mask.np[: len(ids)])[0]:
            generator = self.input_batch.generators.get(int(i))
            if generator is not None:
                generator.set_offset(generator.get_offset() - 4)
        return ModelRunnerOutput(
            req_ids=list(ids), req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=[[1] for _ in ids]
        )


def probe_file(tmp_path, hidden_size: int) -> str:
    path = tmp_path / f"probe-{hidden_size}.safetensors"
    save_probe(
        LengthProbe(hidden_size, 10, hidden_units=4), LengthBins.uniform(), path, model="t", layer=LAYER, training={}
    )
    return str(path)


@pytest.fixture
def runner(tmp_path):
    runner = trail_runner_class(StandInRunner)()
    # What TrailCaptureMixin.load_model sets for a worker that reports (TP rank 0, last stage).
    runner.trail_reports, runner.trail_collector = True, None
    runner.trail_layer, runner.trail_aux_index = LAYER, {LAYER: 0}
    runner.trail_predict_every, runner.trail_prompt_sums, runner.trail_probe_failure = 1, {}, None
    runner.trail_set_probe(load_probe(probe_file(tmp_path, HIDDEN)))
    return runner


def step(runner, request_ids: list[str], prompt_len: int = 4, generated: int = 2, update=None, **batch):
    for request_id in request_ids:
        runner.requests[request_id] = SimpleNamespace(num_prompt_tokens=prompt_len)
    scheduler_output = SimpleNamespace(
        finished_req_ids=set(),
        scheduled_new_reqs=[],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=request_ids, num_computed_tokens=[prompt_len + generated - 1] * len(request_ids)
        ),
        trail_update=update,
        **batch,
    )
    runner.execute_model(scheduler_output)
    return runner.sample_tokens()


def test_a_working_probe_reads_every_decoding_request(runner):
    evidence = step(runner, ["a", "b"]).trail_evidence
    assert evidence.failure is None and evidence.request_ids == ["a", "b"]
    assert evidence.probabilities.shape == (2, 10)


def test_a_probe_that_raises_is_dropped_and_reported_and_the_step_completes(runner, tmp_path):
    broken = load_probe(probe_file(tmp_path, HIDDEN * 2))  # reads 32 columns of 16: its matmul raises
    runner.trail_set_probe(broken)
    output = step(runner, ["a", "b"])
    assert output.sampled_token_ids == [[1], [1]]  # the step's tokens are delivered
    evidence = output.trail_evidence
    assert evidence.failure.startswith("RuntimeError") and evidence.probe_sha256 == broken.sha256
    assert evidence.request_ids == [] and runner.trail_probe is None
    later = step(runner, ["a", "b"])  # reported once; the worker runs no probe now
    assert getattr(later, "trail_evidence", None) is None and later.sampled_token_ids == [[1], [1]]


def test_a_new_probe_that_fails_is_dropped_and_the_next_good_one_is_used(runner, tmp_path):
    """Probes arrive with a step's ``trail_update``; a failed one does not block the next."""
    broken = load_probe(probe_file(tmp_path, HIDDEN * 2))
    step(runner, ["a"], update=RunnerUpdate(predict_every=1, probe=broken))
    assert runner.trail_probe is None
    good = load_probe(probe_file(tmp_path, HIDDEN))
    evidence = step(runner, ["a"], update=RunnerUpdate(predict_every=1, probe=good)).trail_evidence
    assert evidence.failure is None and evidence.probe_sha256 == good.sha256


def test_a_seeded_request_still_prefilling_in_chunks_does_not_crash_the_step(runner):
    """vLLM rewinds the generator of a row whose sampled token it drops; a CPU generator has no
    offset and raised there, killing the engine. The row's generator now sits the step out."""
    seeded = {0: torch.Generator().manual_seed(1), 1: torch.Generator().manual_seed(2)}
    untouched = seeded[1].get_state()
    output = step(runner, ["a", "b"], generators=seeded, discarded={1})
    assert output.sampled_token_ids == [[1], [1]]
    assert set(seeded) == {0, 1}  # back in the batch for the next step
    assert torch.equal(seeded[1].get_state(), untouched)  # as if its dropped token was never drawn
    assert not torch.equal(seeded[0].get_state(), torch.Generator().manual_seed(1).get_state())  # a sampled row draws
    with pytest.raises(RuntimeError, match="offset"):  # what the stand-in (as vLLM) does without the guard
        StandInRunner.sample_tokens(runner)


def read_prefill_chunk(runner, request_id: str, hidden: torch.Tensor, start: int, prompt_len: int):
    """One step that feeds ``hidden``'s rows as prompt positions ``start``.. of one request."""
    runner.requests[request_id] = SimpleNamespace(num_prompt_tokens=prompt_len)
    runner.input_batch = SimpleNamespace(req_ids=[request_id], num_reqs=1)
    runner.query_start_loc = SimpleNamespace(np=np.array([0, len(hidden)]))
    runner.execute_model_state = SimpleNamespace(
        scheduler_output=SimpleNamespace(
            finished_req_ids=set(),
            scheduled_new_reqs=[SimpleNamespace(req_id=request_id, num_computed_tokens=start)],
            scheduled_cached_reqs=SimpleNamespace(req_ids=[], num_computed_tokens=[]),
        ),
        aux_hidden_states=[hidden],
    )
    return runner._trail_read_evidence()


@pytest.mark.parametrize("reading", ["mean", "last"])
def test_the_first_reading_is_taken_from_the_prompt_state_the_probe_was_trained_on(runner, tmp_path, reading):
    """A prompt prefilled in two chunks: p⁰ reads the mean of all six positions or the sixth
    alone, as the probe file says, and nothing is read before the prompt completes."""
    path = tmp_path / f"{reading}.safetensors"
    torch.manual_seed(0)
    save_probe(
        LengthProbe(HIDDEN, 10, hidden_units=4),
        LengthBins.uniform(),
        path,
        model="t",
        layer=LAYER,
        training={},
        prompt_reading=reading,
    )
    runner.trail_set_probe(probe := load_probe(path))
    prompt = torch.randn(6, HIDDEN)
    assert read_prefill_chunk(runner, "a", prompt[:3], start=0, prompt_len=6) is None
    evidence = read_prefill_chunk(runner, "a", prompt[3:], start=3, prompt_len=6)
    state = prompt.mean(dim=0) if reading == "mean" else prompt[-1]
    assert evidence.request_ids == ["a"] and evidence.from_prefill == [True]
    assert torch.allclose(evidence.probabilities[0], probe.module.probabilities(state), atol=1e-6)
    other = prompt[-1] if reading == "mean" else prompt.mean(dim=0)
    assert not torch.allclose(evidence.probabilities[0], probe.module.probabilities(other), atol=1e-6)
    assert runner.trail_prompt_sums == {}  # nothing kept once the prompt is read
