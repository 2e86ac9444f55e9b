"""TRAIL's schedulers in-process, without a model: vLLM's own scheduler-test recipe
(``tests/v1/core/utils.py`` in vLLM) with the bundled model's real config, a small KV
cache, and a fake model runner that samples one token per scheduled request and hands
back whatever probe readings a test sets."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request
from vllm.v1.structured_output import StructuredOutputManager

from trail_contract.settings import SchedulerSettings
from trail_scheduler.assets import bundled_model_path
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, save_probe
from trail_scheduler.vllm.engine_config import TrailEngineConfig
from trail_scheduler.vllm.hints import PROMPT_DISTRIBUTION_ARG, PROMPT_ESTIMATE_ARG
from trail_scheduler.vllm.runner import StepEvidence
from trail_scheduler.vllm.scheduler import TrailSchedulingMixin

BLOCK_SIZE = 16
TOKEN = 100  # what the fake model samples: not the model's EOS (2)
MAX_MODEL_LEN = 1024
PROBE_LAYER = 10
BINS = LengthBins.uniform()
init_none_hash(sha256)
BLOCK_HASHER = get_request_block_hasher(BLOCK_SIZE, sha256)  # as the engine core gives its requests


def build_scheduler(
    cls: type[TrailSchedulingMixin],
    *,
    max_num_seqs: int = 2,
    num_blocks: int = 256,
    max_num_batched_tokens: int = 256,
    probe_path: Path | None = None,
    prefix_caching: bool = False,
    **settings,
) -> TrailSchedulingMixin:
    """One scheduler of ``cls`` with TRAIL ``settings`` as ``trail serve`` hands them over.

    ``num_blocks`` counts the null block vLLM keeps back; prefix caching is off unless
    asked for, so a request holds exactly the blocks of its own tokens. Tests give requests synthetic
    arrival times (seconds since 0), which the shipped starvation guard would count as
    hours of waiting: it is off unless a test sets ``max_wait_seconds``.
    """
    settings.setdefault("max_wait_seconds", None)
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=MAX_MODEL_LEN,
        is_encoder_decoder=False,
        enable_chunked_prefill=True,
        async_scheduling=issubclass(cls, AsyncScheduler),
    )
    cache_config = CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=prefix_caching)
    trail = TrailEngineConfig(
        settings=SchedulerSettings(**settings), probe_path=None if probe_path is None else str(probe_path)
    )
    vllm_config = VllmConfig(
        model_config=ModelConfig(model=str(bundled_model_path()), max_model_len=MAX_MODEL_LEN, dtype="float32"),
        scheduler_config=scheduler_config,
        cache_config=cache_config,
        additional_config=trail.to_additional_config(),
    )
    cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)]
    )
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=BLOCK_SIZE,
        log_stats=True,
    )


def make_request(
    request_id: str,
    *,
    prompt_tokens: int = 16,
    max_tokens: int = 8,
    estimate: float | None = None,
    distribution=None,
    arrival_time: float | None = None,
) -> Request:
    """A request the API server would send: ``estimate`` is its prompt predictor's length,
    ``distribution`` the ``{"edges", "probabilities"}`` it is the mean of."""
    extra = {PROMPT_ESTIMATE_ARG: estimate, PROMPT_DISTRIBUTION_ARG: distribution}
    params = SamplingParams(
        max_tokens=max_tokens,
        ignore_eos=True,
        extra_args={key: value for key, value in extra.items() if value is not None} or None,
    )
    return Request(
        request_id=request_id,
        prompt_token_ids=[TOKEN] * prompt_tokens,
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_time,
        block_hasher=BLOCK_HASHER,
    )


def write_probe(path: Path) -> str:
    """An (untrained, randomly initialised) probe file that fits the bundled model; its sha256."""
    hidden_size = json.loads((bundled_model_path() / "config.json").read_text())["hidden_size"]
    probe = LengthProbe(hidden_size, BINS.count, hidden_units=4)
    return save_probe(probe, BINS, path, model="test", layer=PROBE_LAYER, training={})


def reading(peak_bin: int, confidence: float = 0.9) -> np.ndarray:
    """A probe's output row: ``confidence`` on ``peak_bin``, the rest spread evenly."""
    row = np.full(BINS.count, (1.0 - confidence) / (BINS.count - 1))
    row[peak_bin] = confidence
    return row


class Engine:
    """Drives a scheduler as vLLM's engine core does, with a fake model runner.

    The runner samples ``TOKEN`` for each scheduled request whose prompt is complete
    after the step (nothing for a partial prefill chunk) and, like TRAIL's runner,
    attaches a probe reading for the requests in ``readings``: from the prompt on the
    step that completes it (``from_prefill``), from the last token on later steps. The
    async class runs at vLLM's async queue depth of two: step N+1 is scheduled before
    step N's output is applied, as on GPU.

    After every applied output it checks that the tracker counts exactly the tokens
    vLLM gave each request (under async the outputs arrive late and may be stale), and
    before every step that the decision the scheduler keeps between steps holds exactly
    the views a rebuild would make of its waiting and running requests.
    """

    def __init__(self, scheduler: TrailSchedulingMixin) -> None:
        self.scheduler = scheduler
        self.depth = 2 if isinstance(scheduler, AsyncScheduler) else 1
        self.in_flight: deque = deque()
        self.readings: dict[str, np.ndarray] = {}
        self.probe_error: Exception | None = None  # the workers' probe fails at the next step
        probe = scheduler.trail_control.probe
        self.probe_sha256 = None if probe is None else probe.sha256  # the probe the workers run

    def add(self, *requests: Request) -> None:
        for request in requests:
            self.scheduler.add_request(request)

    def step(self):
        """One engine step: schedule, and apply the oldest output once the queue is full."""
        self._check_kept_views()
        output = self.scheduler.schedule()
        self.in_flight.append((output, self._run(output)))
        while len(self.in_flight) >= self.depth:
            self._apply()
        return output

    def drain(self) -> None:
        """Apply the outputs still in flight (the engine does so before it idles)."""
        while self.in_flight:
            self._apply()

    def run(self, steps: int) -> list:
        return [self.step() for _ in range(steps)]

    def run_to_completion(self, limit: int = 1000) -> list:
        outputs = []
        while self.scheduler.has_requests() and len(outputs) < limit:
            outputs.append(self.step())
        self.drain()
        assert not self.scheduler.has_requests(), "requests left after the step limit"
        return outputs

    def _run(self, output) -> ModelRunnerOutput:
        requests = self.scheduler.requests
        req_ids = list(output.num_scheduled_tokens)
        sampled = [[] if requests[rid].is_prefill_chunk else [TOKEN] for rid in req_ids]
        runner_output = ModelRunnerOutput(
            req_ids=req_ids,
            req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
            sampled_token_ids=sampled,
        )
        rows, ids, from_prefill = [], [], []
        for rid, scheduled in output.num_scheduled_tokens.items():
            request = requests[rid]
            end = request.num_computed_tokens  # advanced by this step's tokens already
            prompt = request.num_prompt_tokens
            if rid in self.readings and end >= prompt:
                rows.append(self.readings[rid])
                ids.append(rid)
                from_prefill.append(end - scheduled < prompt)
        if self.probe_error is not None and req_ids:  # as the runner reports it, and then runs no probe
            runner_output.trail_evidence = StepEvidence.failed(self.probe_sha256, self.probe_error)
            self.probe_error, self.probe_sha256, self.readings = None, None, {}
        elif rows and self.probe_sha256 is not None:
            runner_output.trail_evidence = StepEvidence(ids, np.stack(rows), from_prefill, self.probe_sha256)
        return runner_output

    def _check_kept_views(self) -> None:
        """What the next decision will see: the views a rebuild would make of every request."""
        scheduler = self.scheduler
        scheduler._trail_tell_changes()
        assert scheduler.trail_queues.waiting == {r.request_id: scheduler._waiting_view(r) for r in scheduler.waiting}
        assert scheduler.trail_queues.running == {r.request_id: scheduler._running_view(r) for r in scheduler.running}

    def _apply(self) -> None:
        output, runner_output = self.in_flight.popleft()
        self.scheduler.update_from_output(output, runner_output)
        for rid, request in self.scheduler.requests.items():
            state = self.scheduler.trail_tracker.get(rid)
            counted = None if state is None else state.generated
            assert counted == request.num_output_tokens, f"{rid}: tracker {counted}, vLLM {request.num_output_tokens}"
