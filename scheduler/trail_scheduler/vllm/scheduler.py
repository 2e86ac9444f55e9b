"""The TRAIL scheduler: a thin layer over vLLM V1's schedulers.

The decision logic is one mixin, :class:`TrailSchedulingMixin`, over both of vLLM's
scheduler classes: :class:`TrailScheduler` (``Scheduler``) and
:class:`TrailAsyncScheduler` (``AsyncScheduler``, which tracks the output placeholders
of the step in flight that async scheduling queues ahead). vLLM resolves async
scheduling after the command line is parsed (on by default on GPU, off on CPU), so
vLLM's ``--scheduler-cls`` names :func:`trail_scheduler`, which builds the class that
matches the resolved setting. Preemptions go through vLLM's own ``_preempt_request``,
which already handles a request with output in flight (its tokens are marked stale).

Each step it asks the TRAIL core which young requests to preempt and in what order
to admit and evict, expresses that through vLLM's priority mode (waiting requests
are admitted in ascending ``priority``; under KV pressure vLLM evicts the running
request with the largest one, so protected requests get the smallest values), and
lets vLLM build the batch. After each step it folds the worker's probe readings into
the per-request beliefs.

The admin API's way in is one object the scheduler holds, its control plane
(:mod:`trail_scheduler.vllm.control_plane`): the settings and probe in force, and the
reports; this module keeps the per-step hooks.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.guard import Displacement, PredictionGuard
from trail_scheduler.core.policy import Room, RunningRequest, WaitingRequest
from trail_scheduler.core.ranked import RankedQueues
from trail_scheduler.core.tracker import PredictionTracker
from trail_scheduler.vllm.backlog import OutputRate
from trail_scheduler.vllm.control_plane import ControlPlane
from trail_scheduler.vllm.engine_config import TrailEngineConfig
from trail_scheduler.vllm.hints import request_hints
from trail_scheduler.vllm.metrics import EngineMetrics
from trail_scheduler.vllm.ranked_queue import RankedQueue

# Under vLLM's logger: the engine-core process configures only vLLM's logging, so this is
# how the scheduler's lines (which class runs, settings changes, fallbacks) reach the server's log.
logger = logging.getLogger("vllm.trail.scheduler")

# Ends whose output length says nothing about the prediction (the prediction guard skips them).
UNMEASURED_ENDS = (RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR, RequestStatus.FINISHED_IGNORED)


class TrailSchedulingMixin:
    """TRAIL's half of the scheduler; mixed in front of one of vLLM's scheduler classes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # TRAIL speaks through priorities; the queues must be priority queues.
        self.policy = SchedulingPolicy.PRIORITY
        self.waiting = RankedQueue()
        self.kv_holding_waiting = create_request_queue(self.policy)
        config = TrailEngineConfig.from_vllm_config(self.vllm_config)
        # The decision kept between steps: told which requests changed, it re-ranks only those.
        # Changed since the last decision: requests scheduled, given output, preempted or freed
        # (the waiting queue itself records what came and went).
        self.trail_queues = RankedQueues(config.settings)
        self._trail_changed: set[str] = set()
        self.trail_guard = PredictionGuard(config.settings)
        self.trail_tracker = PredictionTracker(LengthBins.uniform(), config.settings)
        self._trail_last_order: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.trail_worker_probe: str | None = None  # the probe whose readings the workers sent last
        self.trail_metrics = EngineMetrics()
        self.trail_preemptions_total = 0
        self._trail_preempting = False
        self._trail_resuming: set[str] = set()  # preempted, not yet scheduled again
        self.trail_last_decision_seconds = 0.0
        self.trail_output_rate = OutputRate()
        # The admin API's way in (the settings and probe in force); it re-tunes the parts above.
        self.trail_control = ControlPlane(self, config)

    def __call__(self, method: str, update: dict | None = None, probe_bytes: bytes | None = None) -> dict[str, Any]:
        """vLLM's utility call ``"scheduler"`` (:mod:`trail_scheduler.vllm.control`) lands here.

        Fixed parameters: vLLM matches utility arguments against this signature.
        """
        return self.trail_control.dispatch(method, update, probe_bytes)

    # -- requests -----------------------------------------------------------------
    def add_request(self, request) -> None:
        if request.request_id not in self.requests:
            self.trail_tracker.add(request.request_id, **request_hints(request.sampling_params))
        super().add_request(request)

    def _preempt_request(self, request, *args, **kwargs) -> None:
        reason = "policy" if self._trail_preempting else "memory"
        self.trail_metrics.preemptions[reason] += 1
        self.trail_metrics.preempted_generated.append((reason, request.num_output_tokens))
        self.trail_preemptions_total += 1
        self._trail_resuming.add(request.request_id)
        super()._preempt_request(request, *args, **kwargs)

    def _free_request(self, request, *args, **kwargs):
        self._trail_guard_sees_the_end(request)
        errors = self.trail_tracker.finish(request.request_id, request.num_output_tokens)
        if errors is not None and request.num_output_tokens > 0:
            for stage in ("prompt", "first", "refined"):
                value = getattr(errors, stage)
                if value is not None:
                    self.trail_metrics.errors.append((stage, value))
        self.trail_queues.remove(request.request_id)
        self._trail_changed.discard(request.request_id)
        self._trail_resuming.discard(request.request_id)
        return super()._free_request(request, *args, **kwargs)

    def _trail_guard_sees_the_end(self, request) -> None:
        """A request that ended on its own shows how well its first prediction ranked it; one
        aborted or refused, or that generated nothing, shows nothing."""
        state = self.trail_tracker.get(request.request_id)
        if state is None or request.status in UNMEASURED_ENDS or request.num_output_tokens == 0:
            self.trail_guard.aborted(request.request_id)
            return
        tracker = self.trail_tracker
        if self.trail_guard.finished(request.request_id, state, request.num_output_tokens, tracker.requests):
            guard = self.trail_guard
            logger.warning(
                "TRAIL prediction guard: %s (rank correlation %s, regret ratio %s over the last %d requests)",
                guard.level.value,
                guard.rank_correlation,
                guard.regret_ratio,
                guard.samples,
            )
            self.trail_control.follow_settings()

    # -- the step -----------------------------------------------------------------
    def schedule(self, *args, **kwargs):
        if self.waiting or self.running:
            started = time.perf_counter()
            self._trail_order_and_preempt()
            self.trail_last_decision_seconds = time.perf_counter() - started
        output = super().schedule(*args, **kwargs)
        self._trail_changed.update(output.num_scheduled_tokens)  # computed tokens, placeholders, admissions
        if self._trail_resuming:
            self._trail_count_resumed(output)
        if self.trail_control.pending_update is not None:  # every step's output reaches every worker
            output.trail_update, self.trail_control.pending_update = self.trail_control.pending_update, None
        return output

    def update_from_output(self, scheduler_output, model_runner_output):
        tracker = self.trail_tracker
        generated = 0
        for request_id, tokens in zip(model_runner_output.req_ids, model_runner_output.sampled_token_ids):
            request = self.requests.get(request_id)
            if request is not None and request.drop_stale_output and request.num_stale_output_tokens > 0:
                continue  # output vLLM drops (in flight at a drop-mode preemption): not generated
            tracker.advance(request_id, len(tokens))
            generated += len(tokens)
        self.trail_output_rate.step(time.monotonic(), generated)
        self._trail_changed.update(model_runner_output.req_ids)
        evidence = getattr(model_runner_output, "trail_evidence", None)
        if evidence is not None and evidence.failure is not None:
            self.trail_control.probe_failed(evidence.probe_sha256, evidence.failure)
        elif evidence is not None:
            self.trail_worker_probe = evidence.probe_sha256
            # Readings of a probe being replaced (the new one is on its way) are not mixed in.
            if self.trail_control.probe is not None and evidence.probe_sha256 == self.trail_control.probe.sha256:
                tracker.observe(evidence.request_ids, evidence.probabilities, evidence.from_prefill)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _trail_count_resumed(self, output) -> None:
        """What a preemption cost, counted when the request is scheduled again: vLLM V1 must
        rebuild its KV cache (prompt and generated tokens); the prefix cache may still hold the
        full blocks it freed, and the rest is recomputed. vLLM's own metrics skip resumed requests."""
        for request_id in [r for r in self._trail_resuming if r in output.num_scheduled_tokens]:
            self._trail_resuming.discard(request_id)
            request = self.requests[request_id]
            # Advanced by this step's tokens already: what remains was found in the cache.
            cached = request.num_computed_tokens - output.num_scheduled_tokens[request_id]
            self.trail_metrics.resumed_tokens["prefix_cache"] += cached
            self.trail_metrics.resumed_tokens["recomputed"] += request.num_tokens - cached

    def _trail_tell_changes(self) -> None:
        """Tell the kept decision about every request that changed since the last step: a
        waiting one's view is built when it starts waiting (nothing changes it while it waits),
        a running one's again; one neither in the waiting queue nor running is not ranked."""
        changed = self._trail_changed
        changed |= self.waiting.moved
        self.waiting.moved.clear()
        queues, waiting, requests = self.trail_queues, self.waiting.ids, self.requests
        # Every running request changes on a decode step: this loop is most of a step's cost.
        set_running, running_view = queues.set_running, self._running_view
        for request_id in changed:
            request = requests.get(request_id)
            if request_id in waiting:
                queues.set_waiting(self._waiting_view(request))
            elif request is not None and request.status is RequestStatus.RUNNING:
                set_running(running_view(request))
            else:
                queues.remove(request_id)
        changed.clear()

    def _trail_order_and_preempt(self) -> None:
        now = time.time()
        self._trail_tell_changes()
        room = Room(
            free_slots=self.max_num_running_reqs - len(self.running),
            free_blocks=self.kv_cache_manager.block_pool.get_num_free_blocks(),
        )
        decision = self.trail_queues.decide(room, now)
        if decision.preempt:
            tracker = self.trail_tracker
            for displacer, victim in decision.displacements:
                self.trail_guard.preempted(
                    Displacement(displacer, victim, _generated(tracker, displacer), _generated(tracker, victim))
                )
            victims = set(decision.preempt)
            preempted = [r for r in self.running if r.request_id in victims]
            self.running = [r for r in self.running if r.request_id not in victims]
            self._trail_preempting = True
            try:
                for request in preempted:
                    self._preempt_request(request, time.monotonic())
            finally:
                self._trail_preempting = False
        self.trail_metrics.decisions["admit"] += len(decision.admit)
        self.trail_metrics.decisions["promote"] += decision.promoted
        # Encode the decision as priorities (smaller first in, larger first out); an order
        # unchanged since the last step is already encoded. The kept decision hands back the
        # same tuple while an order stands, so most steps need not even compare them.
        last_waiting, last_victims = self._trail_last_order
        waiting_order, victim_order = decision.waiting_order, decision.victim_order
        if waiting_order is not last_waiting and waiting_order != last_waiting:
            for position, request_id in enumerate(waiting_order):
                self.requests[request_id].priority = position
            self.waiting.reorder()
        if victim_order is not last_victims and victim_order != last_victims:
            for position, request_id in enumerate(reversed(victim_order)):
                self.requests[request_id].priority = position
        self._trail_last_order = (waiting_order, victim_order)

    def _waiting_view(self, request) -> WaitingRequest:
        state = self.trail_tracker.get(request.request_id)
        return WaitingRequest(
            request_id=request.request_id,
            arrival_time=request.arrival_time,
            predicted_remaining=state.predicted_remaining if state else self.trail_tracker.unknown_estimate,
            blocks_needed=math.ceil(request.num_tokens / self.block_size),
            true_remaining=state.true_remaining if state else None,
            remaining_spread=state.remaining_spread if state else 0.0,
        )

    def _running_view(self, request) -> RunningRequest:
        state = self.trail_tracker.requests.get(request.request_id)
        if state is None:
            estimate = initial = self.trail_tracker.unknown_estimate
            true_remaining, spread = None, 0.0
        else:
            estimate, initial = state.predicted_remaining, state.initial_prediction
            true_remaining, spread = state.true_remaining, state.remaining_spread
        # Positional, in the fields' order: built for every running request on every decode
        # step, where keywords took twice as long (0.5 µs, a tenth of the step at 256 running).
        return RunningRequest(
            request.request_id,
            request.arrival_time,
            # Under async scheduling the token in flight counts (a preempted request keeps it);
            # with speculative decoding, unverified draft tokens count too: protection comes early.
            request.num_output_tokens + request.num_output_placeholders,
            initial,
            estimate,
            -(-request.num_computed_tokens // self.block_size),  # blocks held
            request.num_preemptions,
            true_remaining,
            spread,
            # The prefix cache may still hold some of it when it resumes; nobody knows how much now.
            request.num_tokens,
        )


def _generated(tracker: PredictionTracker, request_id: str) -> int:
    state = tracker.get(request_id)
    return 0 if state is None else state.generated


class TrailScheduler(TrailSchedulingMixin, Scheduler):
    """TRAIL on vLLM's synchronous scheduler (async scheduling off: CPU, or by choice)."""


class TrailAsyncScheduler(TrailSchedulingMixin, AsyncScheduler):
    """TRAIL on vLLM's async scheduler (vLLM's default on GPU)."""


def trail_scheduler(*, vllm_config, **kwargs) -> TrailSchedulingMixin:
    """What vLLM's ``--scheduler-cls`` names: the TRAIL scheduler matching vLLM's async setting."""
    asynchronous = bool(vllm_config.scheduler_config.async_scheduling)
    cls = TrailAsyncScheduler if asynchronous else TrailScheduler
    logger.info("TRAIL scheduling on vLLM's %s (async scheduling %s)", cls.__bases__[1].__name__, asynchronous)
    return cls(vllm_config=vllm_config, **kwargs)
