"""Hidden-state capture and the probe, inside the model runner.

The capture uses vLLM's auxiliary-hidden-state outputs (the EAGLE-3 path): the
model's own forward returns the residual stream after the chosen layer, so it
survives torch.compile and CUDA graphs, unlike a Python forward hook. The probe runs
once per step, batched over the step's requests, on the model's device; only the
``[requests, bins]`` probabilities travel back to the scheduler, attached to the
step's ``ModelRunnerOutput`` as ``trail_evidence``. Under async scheduling (vLLM's GPU default) the runner returns an
``AsyncModelRunnerOutput`` that is materialised after the next step is queued; the
readings are then copied to the host without blocking and attached when vLLM calls
``get_output``, so the probe adds no host-device synchronisation. The other way, a settings change
reaches the runner attached to a ``SchedulerOutput`` as ``trail_update``: both ride
objects vLLM already sends between its processes, whatever the executor.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from vllm.distributed.parallel_state import get_pp_group, get_tp_group
from vllm.v1.outputs import AsyncModelRunnerOutput

from trail_scheduler.probe import LoadedProbe, ProbeFileError, check_fits, load_probe
from trail_scheduler.vllm.engine_config import TrailEngineConfig

COLLECT_ID_ARG = "trail_collect_id"  # sampling_params.extra_args key: the prompt's id in collection

logger = logging.getLogger("vllm.trail.runner")


@dataclass(frozen=True)
class RunnerUpdate:
    """What a settings change asks of the runner: the new probe, if any, loaded and checked
    against the model once, by the scheduler (it travels with the step to every worker)."""

    predict_every: int
    probe: LoadedProbe | None = None


@dataclass(frozen=True)
class StepEvidence:
    """One step's probe readings: row i belongs to ``request_ids[i]``.

    ``failure`` says the probe ``probe_sha256`` failed on the worker (no rows then): the
    worker has dropped it, and the scheduler stops relying on it.
    """

    request_ids: list[str]
    probabilities: np.ndarray  # [n, K]
    from_prefill: list[bool]
    probe_sha256: str
    failure: str | None = None

    @classmethod
    def failed(cls, probe_sha256: str, error: BaseException) -> StepEvidence:
        message = f"{type(error).__name__}: {error}"[:500]
        return cls([], np.zeros((0, 0)), [], probe_sha256, failure=message)

    def resolve(self) -> StepEvidence:
        return self


@dataclass(frozen=True)
class PendingEvidence:
    """Readings still on their way to the host (a non-blocking copy on GPU)."""

    request_ids: list[str]
    probabilities: torch.Tensor  # [n, K], host memory once ``ready`` has passed
    ready: torch.cuda.Event | None
    from_prefill: list[bool]
    probe_sha256: str

    def resolve(self) -> StepEvidence:
        try:
            if self.ready is not None:
                self.ready.synchronize()
            probabilities = self.probabilities.numpy().astype(np.float64)
        except Exception as error:  # a probe kernel failed on the device: report it, keep serving
            logger.exception("TRAIL probe %s failed; the scheduler stops using it", self.probe_sha256[:12])
            return StepEvidence.failed(self.probe_sha256, error)
        return StepEvidence(self.request_ids, probabilities, self.from_prefill, self.probe_sha256)


class AsyncOutputWithEvidence(AsyncModelRunnerOutput):
    """An async step output that carries the step's probe readings into ``get_output``."""

    def __init__(self, output: AsyncModelRunnerOutput, evidence: PendingEvidence) -> None:
        self.output = output
        self.evidence = evidence

    def get_output(self):
        output = self.output.get_output()
        if output.req_ids:
            output.trail_evidence = self.evidence.resolve()
        return output


class TrailCaptureMixin:
    """Mixed into vLLM's (CPU or GPU) model runner by :func:`trail_runner_class`."""

    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        config = TrailEngineConfig.from_vllm_config(self.vllm_config)
        # Under tensor (and pipeline) parallelism every worker of the last stage holds the
        # whole residual stream, but vLLM returns the output of its first worker only: that
        # one runs the probe and collects; the others capture alike and skip the work.
        self.trail_reports = get_tp_group().rank_in_group == 0 and get_pp_group().is_last_rank
        probe = load_probe(config.probe_path) if config.probe_path else None
        layer = capture_layer(config, probe, self.model_config)
        if not hasattr(self.model, "set_aux_hidden_state_layers"):
            raise ValueError(
                f"{type(self.model).__name__} does not expose intermediate hidden states "
                "(vLLM's EAGLE-3 interface); TRAIL's embedding predictions need it. "
                "Serve it with --policy fcfs or sjf."
            )
        self.trail_collector = None
        layers = {layer}
        if config.collect_dir and self.trail_reports:
            from trail_scheduler.vllm.collector import RequestCollector

            check_layers(config.collect_layers, self.model_config)
            layers.update(config.collect_layers)
        # The model returns the captured layers in increasing order.
        captured = tuple(sorted(layers))
        self.model.set_aux_hidden_state_layers(captured)
        self.use_aux_hidden_state_outputs = True
        self.trail_aux_index = {captured_layer: i for i, captured_layer in enumerate(captured)}
        self.trail_layer = layer
        self.trail_predict_every = config.settings.predict_every
        self.trail_prompt_sums: dict[str, tuple[torch.Tensor, int]] = {}
        self.trail_probe_failure: StepEvidence | None = None  # to report with the next output
        if config.collect_dir and self.trail_reports:
            self.trail_collector = RequestCollector(
                config.collect_dir,
                layers=config.collect_layers,
                hidden_size=self.model_config.get_hidden_size(),
                shard_size=config.collect_shard_size,
            )
        self.trail_set_probe(probe)

    def trail_set_probe(self, probe: LoadedProbe | None) -> None:
        """Swap the probe (validated by the caller against this model and layer)."""
        if probe is not None:
            probe.module.to(self.device, dtype=torch.float32)
        self.trail_probe = probe

    def execute_model(self, scheduler_output, *args, **kwargs):
        update: RunnerUpdate | None = getattr(scheduler_output, "trail_update", None)
        if update is not None:  # validated by the scheduler against this model
            self.trail_predict_every = update.predict_every
            if update.probe is not None:
                try:
                    self.trail_set_probe(update.probe)
                except Exception as error:  # e.g. out of device memory: serve on without it
                    self._trail_drop_probe(update.probe.sha256, error)
        return super().execute_model(scheduler_output, *args, **kwargs)

    def sample_tokens(self, *args, **kwargs):
        evidence = None
        if self.execute_model_state is not None and self.trail_reports:
            if self.trail_collector is not None:
                self._trail_collect()
            evidence = self._trail_evidence()
        discarded = self.discard_request_mask.np[: self.input_batch.num_reqs]
        with _no_cpu_generator_rewind(self.input_batch.generators, discarded):
            output = super().sample_tokens(*args, **kwargs)
        if evidence is None:
            return output
        if isinstance(output, AsyncModelRunnerOutput):
            return AsyncOutputWithEvidence(output, evidence)
        if getattr(output, "req_ids", None):
            output.trail_evidence = evidence.resolve()  # a fresh output object each step with requests
        elif isinstance(evidence, StepEvidence):
            self.trail_probe_failure = evidence  # nothing to ride on: the next step's output carries it
        return output

    def _trail_evidence(self) -> PendingEvidence | StepEvidence | None:
        """This step's readings, or the report of a probe that failed (now or since the last
        report) and was dropped: a probe error never takes the engine and its requests down."""
        probe = self.trail_probe
        try:
            evidence = self._trail_read_evidence()
        except Exception as error:
            if probe is None:
                raise  # not the probe's doing
            self._trail_drop_probe(probe.sha256, error)
            evidence = None
        failure, self.trail_probe_failure = self.trail_probe_failure, None
        return failure or evidence

    def _trail_drop_probe(self, sha256: str, error: BaseException) -> None:
        logger.exception("TRAIL probe %s failed on the worker; serving on without it", sha256[:12])
        self.trail_probe = None
        self.trail_prompt_sums.clear()
        self.trail_probe_failure = StepEvidence.failed(sha256, error)

    @torch.inference_mode()
    def _trail_read_evidence(self) -> PendingEvidence | None:
        state = self.execute_model_state
        scheduler_output = state.scheduler_output
        for request_id in scheduler_output.finished_req_ids:
            self.trail_prompt_sums.pop(request_id, None)
        if not state.aux_hidden_states or self.trail_probe is None:
            return None
        hidden = state.aux_hidden_states[self.trail_aux_index[self.trail_layer]]
        rows: list[torch.Tensor] = []
        request_ids: list[str] = []
        from_prefill: list[bool] = []
        decode_rows: list[int] = []
        decode_ids: list[str] = []
        for span in self._trail_spans(scheduler_output):
            request_id, first_row, start, scheduled, prompt_len = span
            end_row = first_row + scheduled
            prompt_rows = max(0, min(scheduled, prompt_len - start))
            if prompt_rows:
                complete = start + scheduled >= prompt_len
                prompt_state = self._trail_prompt_state(
                    request_id, hidden[first_row : first_row + prompt_rows], start, complete
                )
                if complete:  # the first reading p⁰
                    rows.append(prompt_state)
                    request_ids.append(request_id)
                    from_prefill.append(True)
            consumed_outputs = start + scheduled - prompt_len  # output tokens fed in so far
            if consumed_outputs > 0 and consumed_outputs % self.trail_predict_every == 0:
                decode_rows.append(end_row - 1)
                decode_ids.append(request_id)
        if decode_rows:
            index = _on_device(decode_rows, hidden.device)
            rows.extend(hidden.index_select(0, index).float().unbind(0))
            request_ids.extend(decode_ids)
            from_prefill.extend([False] * len(decode_ids))
        if not rows:
            return None
        probabilities = self.trail_probe.module.probabilities(torch.stack(rows))
        ready = None
        if probabilities.is_cuda:
            host = torch.empty(probabilities.shape, dtype=probabilities.dtype, pin_memory=True)
            probabilities = host.copy_(probabilities, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return PendingEvidence(request_ids, probabilities, ready, from_prefill, self.trail_probe.sha256)

    def _trail_prompt_state(
        self, request_id: str, prompt_hidden: torch.Tensor, start: int, complete: bool
    ) -> torch.Tensor | None:
        """The state p⁰ is read from once this chunk completes the prompt (None before): as the
        probe was trained, the last position, or the mean over all chunks (a running sum)."""
        if self.trail_probe.prompt_reading == "last":
            return prompt_hidden[-1].float() if complete else None
        total, count = self.trail_prompt_sums.pop(request_id, (None, 0))
        if start == 0 or total is None:
            total, count = 0, 0
        total = prompt_hidden.float().sum(dim=0) + total
        count += len(prompt_hidden)
        if complete:
            return total / count
        self.trail_prompt_sums[request_id] = (total, count)
        return None

    def _trail_spans(self, scheduler_output) -> list[tuple[str, int, int, int, int]]:
        """Per scheduled request: (id, first row in this step's hidden states, first
        position, rows scheduled, prompt length)."""
        starts = _computed_before_step(scheduler_output)
        num_reqs = self.input_batch.num_reqs
        query_start = self.query_start_loc.np[: num_reqs + 1]
        spans = []
        for index, request_id in enumerate(self.input_batch.req_ids[:num_reqs]):
            first_row, end_row = int(query_start[index]), int(query_start[index + 1])
            start = starts.get(request_id)
            if end_row > first_row and start is not None:
                prompt_len = self.requests[request_id].num_prompt_tokens
                spans.append((request_id, first_row, start, end_row - first_row, prompt_len))
        return spans

    @torch.inference_mode()
    def _trail_collect(self) -> None:
        """Collection mode: hand this step's states of the collected layers to the collector."""
        state = self.execute_model_state
        scheduler_output = state.scheduler_output
        collector = self.trail_collector
        collector.finish(scheduler_output.finished_req_ids)
        if not state.aux_hidden_states:
            return
        index = [self.trail_aux_index[layer] for layer in collector.layers]
        hidden = torch.stack([state.aux_hidden_states[i] for i in index], dim=1)  # [rows, layers, H]
        for request_id, first_row, start, scheduled, prompt_len in self._trail_spans(scheduler_output):
            extra = self.requests[request_id].sampling_params.extra_args or {}
            collector.observe(
                request_id,
                extra.get(COLLECT_ID_ARG, request_id),
                hidden[first_row : first_row + scheduled],
                start,
                prompt_len,
            )

    def trail_flush_collection(self) -> list[str]:
        """Write every request still buffered (the caller knows none is in flight)."""
        return self.trail_collector.flush(everything=True) if self.trail_collector is not None else []


def _on_device(values: list[int], device: torch.device) -> torch.Tensor:
    """An index tensor on ``device``; on GPU through pinned memory, so the host does not wait
    for the GPU's queued work (a pageable copy would)."""
    index = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return index
    return index.pin_memory().to(device, non_blocking=True)


def _computed_before_step(scheduler_output) -> dict[str, int]:
    """Tokens each scheduled request had computed before this step (its first position)."""
    starts = {new.req_id: new.num_computed_tokens for new in scheduler_output.scheduled_new_reqs}
    cached = scheduler_output.scheduled_cached_reqs
    starts.update(zip(cached.req_ids, cached.num_computed_tokens))
    return starts


def check_layers(layers, model_config) -> None:
    """Collected layers must exist in this model (index i: after i decoder layers)."""
    num_layers = model_config.hf_config.num_hidden_layers
    if not layers:
        raise ValueError("collection needs at least one layer to capture")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} are outside this model's layers 0..{num_layers - 1}")


def capture_layer(config: TrailEngineConfig, probe: LoadedProbe | None, model_config) -> int:
    """The decoder layer to capture, checked against the model (and the probe, if any).

    Index i is the residual stream after i decoder layers. Without a probe or an
    explicit layer, a third of the depth (the reference: layer 11 of 32).
    """
    hidden_size = model_config.get_hidden_size()
    num_layers = model_config.hf_config.num_hidden_layers
    if probe is not None:
        check_fits(probe, hidden_size, num_layers)
    layer = config.probe_layer
    if layer is None:
        layer = probe.layer if probe is not None else max(1, num_layers // 3)
    if probe is not None and probe.layer != layer:
        raise ProbeFileError(f"the probe reads layer {probe.layer} but --probe-layer is {layer}")
    if not 0 <= layer < num_layers:
        raise ValueError(f"probe layer {layer} is outside this model's layers 0..{num_layers - 1}")
    return layer


@contextmanager
def _no_cpu_generator_rewind(generators: dict[int, torch.Generator], discarded: np.ndarray):
    """Keep a seeded request whose prompt is still being prefilled in chunks from crashing the engine.

    vLLM samples a token for such a request and drops it, then rewinds the request's generator
    with ``set_offset``, which only CUDA generators have: on a CPU generator it raises, the
    engine core dies and every request in flight fails (any client that sends ``seed`` with a
    prompt longer than the step's token budget can do it). A CPU generator is taken out of the
    batch for that step instead, so the dropped token is drawn from the global generator and the
    request's own stream stays exactly where it was, as the rewind intends.
    """
    held = {
        index: generator
        for index, generator in generators.items()
        if generator.device.type == "cpu" and index < len(discarded) and discarded[index]
    }
    for index in held:
        del generators[index]
    try:
        yield
    finally:
        generators.update(held)


@cache
def trail_runner_class(base: type) -> type:
    """vLLM's runner class for this platform with TRAIL's capture mixed in."""
    return type(f"Trail{base.__name__}", (TrailCaptureMixin, base), {})
