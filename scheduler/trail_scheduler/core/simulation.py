"""The policy on an ideal engine: what an order is worth, apart from what the engine costs.

Every step, each running request generates one token, the tracker takes the probe's
recorded reading of it as the scheduler would, and :class:`Policy` decides again: admit in
its waiting order while slots are free, preempt whom it names. Answers, readings and
prompt estimates are recorded ones, so the same requests can be served under every
policy and the differences are the policies' alone. What the engine adds (prefill time,
batch size changing step time, memory) is left out, except recomputation, which can be
given a cost: with ``prefill_tokens_per_step`` finite, a request spends
``ceil(tokens to prefill / prefill_tokens_per_step)`` steps on them before its next token.

The prediction guard (when ``settings`` switch it on) measures the finished requests as the
engine's does and sets the policy's fallback level.

Measured against a real run of the same requests, the difference between a simulated and
a measured ratio is what the engine costs; between the oracle and TRAIL here, what the
predictions cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from trail_contract.admin_api import GuardLevel
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.guard import Displacement, PredictionGuard
from trail_scheduler.core.policy import Policy, PolicyName, Room, RunningRequest, SchedulerSettings, WaitingRequest
from trail_scheduler.core.tracker import PredictionTracker


@dataclass(frozen=True)
class RecordedRequest:
    """One answer as it was generated, with the probe's reading of every state."""

    request_id: str
    arrival: float  # seconds
    length: int  # output tokens
    prompt_tokens: int
    first_reading: np.ndarray  # [K]: the probe on the prompt (p⁰)
    readings: np.ndarray  # [length - 1, K]: on output tokens 0 .. length - 2 as they are fed back
    prompt_estimate: float | None = None
    prompt_distribution: tuple[LengthBins, np.ndarray] | None = None


@dataclass(frozen=True)
class Outcome:
    """Per request, in the input's order."""

    latency: tuple[float, ...]  # seconds from arrival to the last token
    ttft: tuple[float, ...]  # seconds from arrival to the first token
    preemptions: int
    recomputed_tokens: int  # prompt and generated tokens prefilled again after preemptions
    guard_levels: tuple[GuardLevel, ...] = (GuardLevel.TRUSTING,)  # the prediction guard's, in turn

    @property
    def mean_latency(self) -> float:
        return float(np.mean(self.latency))

    @property
    def mean_ttft(self) -> float:
        return float(np.mean(self.ttft))


@dataclass
class _Served:
    request: RecordedRequest
    generated: int = 0
    preemptions: int = 0
    to_prefill: float = 0  # tokens left to prefill before the next token
    first_token_at: float | None = None


def simulate(
    requests: Sequence[RecordedRequest],
    settings: SchedulerSettings,
    bins: LengthBins,
    slots: int,
    step_seconds: float = 1.0,
    prefill_tokens_per_step: float = math.inf,
    policy_class: Callable[[SchedulerSettings], Policy] = Policy,
) -> Outcome:
    """Serve ``requests`` with ``slots`` batch slots, one step every ``step_seconds``;
    ``policy_class`` makes what decides each step (a study may substitute its own)."""
    if slots < 1 or not requests or step_seconds <= 0 or prefill_tokens_per_step <= 0:
        raise ValueError("need at least one request and one slot, and positive step and prefill rates")
    if any(r.length < 1 or len(r.readings) < r.length - 1 for r in requests):
        raise ValueError("every request needs a length of at least 1 and a reading for each fed-back token")
    if len({r.request_id for r in requests}) < len(requests):
        raise ValueError("request ids must be unique")
    if not all(math.isfinite(r.arrival) and r.arrival >= 0 for r in requests):
        raise ValueError("arrival times must be finite and not negative")
    guard = PredictionGuard(settings)
    policy = policy_class(settings)
    tracker = PredictionTracker(bins, settings)
    levels = [guard.level]
    pending = sorted(range(len(requests)), key=lambda i: (requests[i].arrival, i))
    served: dict[str, _Served] = {}
    waiting: list[str] = []
    running: list[str] = []
    finished_at: dict[str, float] = {}
    preemptions = recomputed = 0
    step = 0
    while len(finished_at) < len(requests):
        now = step * step_seconds
        while pending and requests[pending[0]].arrival <= now:
            request = requests[pending.pop(0)]
            served[request.request_id] = _Served(request, to_prefill=request.prompt_tokens)
            waiting.append(request.request_id)
            oracle = float(request.length) if settings.policy is PolicyName.TRAIL_ORACLE else None
            tracker.add(request.request_id, request.prompt_estimate, oracle, request.prompt_distribution)
        if not waiting and not running:
            step = math.ceil(requests[pending[0]].arrival / step_seconds)
            continue
        decision = policy.decide(
            [_waiting_view(served[i], tracker) for i in waiting],
            [_running_view(served[i], tracker) for i in running],
            Room(free_slots=slots - len(running), free_blocks=math.inf),
            now,
        )
        for displacer, victim in decision.displacements:
            guard.preempted(Displacement(displacer, victim, served[displacer].generated, served[victim].generated))
        for request_id in decision.preempt:
            state = served[request_id]
            running.remove(request_id)
            state.preemptions += 1
            state.to_prefill = state.request.prompt_tokens + state.generated
            preemptions += 1
            recomputed += state.to_prefill
        waiting = list(decision.waiting_order)
        while waiting and len(running) < slots:
            running.append(waiting.pop(0))
        done_at = now + step_seconds
        for request_id in list(running):
            state = served[request_id]
            if state.to_prefill > prefill_tokens_per_step:
                state.to_prefill -= prefill_tokens_per_step
                continue
            # The step that completes the prefill samples a token, as every decode step does.
            state.to_prefill = 0
            _generate(state, tracker, settings.predict_every)
            if state.first_token_at is None:
                state.first_token_at = done_at
            if state.generated >= state.request.length:
                running.remove(request_id)
                finished_at[request_id] = done_at
                if guard.finished(request_id, tracker.get(request_id), state.request.length, tracker.requests):
                    policy = policy_class(guard.effective(settings))
                    levels.append(guard.level)
                tracker.finish(request_id, state.request.length)
        step += 1
    return Outcome(
        latency=tuple(finished_at[r.request_id] - r.arrival for r in requests),
        ttft=tuple(served[r.request_id].first_token_at - r.arrival for r in requests),
        preemptions=preemptions,
        recomputed_tokens=recomputed,
        guard_levels=tuple(levels),
    )


def _generate(state: _Served, tracker: PredictionTracker, predict_every: int) -> None:
    """One token, then the probe's reading as the scheduler folds it in: p⁰ with the first
    token (a recompute's prompt reading is ignored by the tracker), then every
    ``predict_every``-th fed-back token."""
    request_id, generated = state.request.request_id, state.generated
    tracker.advance(request_id, 1)
    if generated == 0:
        tracker.observe([request_id], state.request.first_reading[None, :], [True])
    elif generated % predict_every == 0:
        tracker.observe([request_id], state.request.readings[generated - 1][None, :], [False])
    state.generated += 1


def _waiting_view(state: _Served, tracker: PredictionTracker) -> WaitingRequest:
    prediction = tracker.get(state.request.request_id)
    return WaitingRequest(
        request_id=state.request.request_id,
        arrival_time=state.request.arrival,
        predicted_remaining=prediction.predicted_remaining,
        true_remaining=prediction.true_remaining,
        remaining_spread=prediction.remaining_spread,
    )


def _running_view(state: _Served, tracker: PredictionTracker) -> RunningRequest:
    prediction = tracker.get(state.request.request_id)
    return RunningRequest(
        request_id=state.request.request_id,
        arrival_time=state.request.arrival,
        generated_tokens=state.generated,
        initial_prediction=prediction.initial_prediction,
        predicted_remaining=prediction.predicted_remaining,
        preemptions=state.preemptions,
        true_remaining=prediction.true_remaining,
        remaining_spread=prediction.remaining_spread,
        recompute_tokens=state.request.prompt_tokens + state.generated,
    )
