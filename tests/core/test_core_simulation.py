"""The policy on an ideal engine: by hand on small cases, and properties of any burst."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.policy import SchedulerSettings
from trail_scheduler.core.simulation import RecordedRequest, simulate

BINS = LengthBins.uniform(8, 64)
FCFS = SchedulerSettings(policy="fcfs")
ORACLE = SchedulerSettings(policy="trail-oracle")
TRAIL = SchedulerSettings(policy="trail")


def truthful(
    request_id: str, length: int, arrival: float = 0.0, prompt_tokens: int = 1, estimate: float | None = None
) -> RecordedRequest:
    """An answer whose probe reads the true remaining length's bin on every state."""

    def reading(remaining: int) -> np.ndarray:
        row = np.full(BINS.count, 1e-6)
        row[BINS.index(remaining)] = 1.0
        return row / row.sum()

    return RecordedRequest(
        request_id=request_id,
        arrival=arrival,
        length=length,
        prompt_tokens=prompt_tokens,
        first_reading=reading(length - 1),
        readings=np.stack([reading(length - 2 - j) for j in range(length - 1)])
        if length > 1
        else np.zeros((0, BINS.count)),
        prompt_estimate=estimate,
    )


def test_with_a_slot_each_every_answer_takes_its_length_in_steps():
    requests = [truthful("a", 5), truthful("b", 1), truthful("c", 12)]
    outcome = simulate(requests, FCFS, BINS, slots=3, step_seconds=0.5)
    assert outcome.latency == (2.5, 0.5, 6.0)
    assert outcome.ttft == (0.5, 0.5, 0.5)
    assert outcome.preemptions == outcome.recomputed_tokens == 0


def test_one_slot_burst_by_hand():
    requests = [truthful("a", 3), truthful("b", 1), truthful("c", 2)]
    fcfs = simulate(requests, FCFS, BINS, slots=1)
    oracle = simulate(requests, ORACLE, BINS, slots=1)
    assert fcfs.latency == (3, 4, 6)
    assert oracle.latency == (6, 1, 3)
    assert fcfs.ttft == (1, 4, 5)
    assert oracle.ttft == (4, 1, 2)


def test_a_prompt_takes_its_prefill_steps_before_the_first_token():
    outcome = simulate([truthful("a", 2, prompt_tokens=10)], FCFS, BINS, slots=1, prefill_tokens_per_step=4)
    assert outcome.ttft == (3,)  # 4 + 4 + the last 2 with the first token
    assert outcome.latency == (4,)


def test_trail_preempts_for_a_shorter_arrival_and_the_victim_recomputes():
    long = truthful("long", 50, prompt_tokens=6, estimate=50)
    short = truthful("short", 2, arrival=3, estimate=2)
    free = simulate([long, short], TRAIL, BINS, slots=1)
    assert free.preemptions == 1
    assert free.recomputed_tokens == 6 + 3  # its prompt and the 3 tokens it had generated
    assert free.latency == (52, 2)  # the short one runs at once; the long one waits 2 steps
    costly = simulate([long, short], TRAIL, BINS, slots=1, prefill_tokens_per_step=4)
    # Its first prefill (6 tokens) costs one step more, so it has 2 tokens when preempted;
    # recomputing 8 costs one step more again.
    assert costly.recomputed_tokens == 6 + 2
    assert costly.latency[0] == 52 + 1 + 1
    # Without preemption (c = 0) the short one waits for the long one instead.
    patient = simulate([long, short], TRAIL.model_copy(update={"c": 0.0}), BINS, slots=1)
    assert patient.preemptions == 0
    assert patient.latency == (50, 49)


@pytest.mark.parametrize("probe_ranks_after, preempted_at", [(0, 1), (5, 5), (40, None)])
def test_a_request_admitted_on_its_prompt_estimate_is_displaced_once_its_belief_ranks(probe_ranks_after, preempted_at):
    """The prompt predictor calls "a" short, the probe reads it long: it is admitted first and
    displaced for "b" as soon as its belief ranks it, and never if the answer ends first."""
    a = truthful("a", 40, estimate=10)
    b = truthful("b", 20, estimate=20)
    settings = TRAIL.model_copy(update={"probe_ranks_after": probe_ranks_after})
    outcome = simulate([a, b], settings, BINS, slots=1)
    if preempted_at is None:
        assert outcome.preemptions == 0
        assert outcome.latency == (40, 60)
    else:
        assert outcome.preemptions == 1
        assert outcome.recomputed_tokens == 1 + preempted_at  # its prompt and what it had generated
        assert outcome.latency == (60, preempted_at + 20)  # "a" waits out "b" whenever it goes


def test_requests_arriving_later_wait_for_their_arrival():
    outcome = simulate([truthful("a", 2, arrival=10.0)], FCFS, BINS, slots=1)
    assert outcome.latency == (2,)


@pytest.mark.parametrize(
    "requests, kwargs",
    [
        ([], {}),
        ([truthful("a", 2)], {"slots": 0}),
        ([truthful("a", 2)], {"step_seconds": 0}),
        ([truthful("a", 2)], {"prefill_tokens_per_step": 0}),
        ([truthful("a", 2), truthful("a", 3)], {}),
        ([truthful("a", 2, arrival=math.inf)], {}),
        ([truthful("a", 2, arrival=-1.0)], {}),
    ],
)
def test_impossible_runs_are_refused(requests, kwargs):
    with pytest.raises(ValueError):
        simulate(requests, FCFS, BINS, **({"slots": 1} | kwargs))


def test_an_answer_without_enough_readings_is_refused():
    short_of_readings = truthful("a", 3)
    broken = RecordedRequest(**{**short_of_readings.__dict__, "readings": short_of_readings.readings[:1]})
    with pytest.raises(ValueError, match="reading"):
        simulate([broken], FCFS, BINS, slots=1)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    slots=st.integers(1, 4),
    prefill=st.sampled_from([math.inf, 3.0]),
    probe_ranks_after=st.integers(0, 50),
)
def test_any_burst(lengths, slots, prefill, probe_ranks_after):
    requests = [truthful(str(i), n, prompt_tokens=2) for i, n in enumerate(lengths)]
    fcfs = simulate(requests, FCFS, BINS, slots, prefill_tokens_per_step=prefill)
    oracle = simulate(requests, ORACLE, BINS, slots, prefill_tokens_per_step=prefill)
    trail_settings = TRAIL.model_copy(update={"probe_ranks_after": probe_ranks_after})
    trail = simulate(requests, trail_settings, BINS, slots, prefill_tokens_per_step=prefill)
    # In a burst the oracle is shortest-processing-time first, the best order there is.
    assert oracle.preemptions == 0
    assert oracle.mean_latency <= fcfs.mean_latency + 1e-9
    for outcome in (fcfs, oracle, trail):
        assert all(t <= lat for t, lat in zip(outcome.ttft, outcome.latency))
        assert all(lat >= n for lat, n in zip(outcome.latency, lengths))


def noisy(request_id: str, length: int, arrival: float, wrong: float, rng: np.random.Generator) -> RecordedRequest:
    """An answer with a 200-token prompt whose probe reads a random bin with probability
    ``wrong`` (the true remaining length's otherwise) and whose prompt estimate is a guess."""

    def reading(remaining: int) -> np.ndarray:
        row = np.full(BINS.count, 0.02)
        row[rng.integers(BINS.count) if rng.random() < wrong else BINS.index(remaining)] = 1.0
        return row / row.sum()

    readings = [reading(length - 2 - j) for j in range(length - 1)]
    return RecordedRequest(
        request_id,
        arrival,
        length,
        200,
        reading(length - 1),
        np.stack(readings) if readings else np.zeros((0, BINS.count)),
        prompt_estimate=float(rng.integers(1, 64)),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preemption_by_benefit_preempts_less_and_serves_faster_when_recompute_costs(seed):
    """A queue that never empties (an answer of 2-63 tokens every 2 steps, 4 slots), noisy
    predictions, and a recompute of at least 4 steps (200 prompt tokens at 50 a step): TRAIL
    preempts on every estimate that moves; weighing gain against cost preempts less and
    serves the same requests faster (mean latency; numbers in docs/architecture.md)."""
    rng = np.random.default_rng(seed)
    requests = [noisy(f"r{i}", int(rng.integers(2, 64)), 2.0 * i, 0.2, rng) for i in range(80)]
    # The prediction guard off: this measures the preemption rule alone.
    trail = SchedulerSettings(
        policy="trail", c=2.0, max_preemptions=None, max_wait_seconds=None, prediction_guard=False
    )
    weighed = trail.model_copy(update={"preemption_by_benefit": True, "recompute_token_cost": 1 / 50})
    plain = simulate(requests, trail, BINS, slots=4, prefill_tokens_per_step=50)
    benefit = simulate(requests, weighed, BINS, slots=4, prefill_tokens_per_step=50)
    assert benefit.preemptions < plain.preemptions / 2
    assert benefit.mean_latency < 0.95 * plain.mean_latency


def lying(request_id: str, length: int, arrival: float) -> RecordedRequest:
    """An answer whose prompt estimate and probe readings are mirrored: long reads short."""
    told = truthful(request_id, length, arrival, estimate=64.0 - length)
    mirror = lambda rows: rows[..., ::-1].copy()  # noqa: E731
    return RecordedRequest(
        request_id=request_id,
        arrival=told.arrival,
        length=length,
        prompt_tokens=told.prompt_tokens,
        first_reading=mirror(told.first_reading),
        readings=mirror(told.readings),
        prompt_estimate=told.prompt_estimate,
    )


def test_the_guard_falls_back_to_arrival_order_on_mirrored_predictions_and_keeps_true_ones_order():
    lengths = np.random.default_rng(0).integers(1, 63, size=160)
    guarded = TRAIL.model_copy(  # no starvation bound: it would put the burst in arrival order by itself
        update={
            "c": 1.0,
            "max_wait_seconds": None,
            "prediction_guard": True,
            "prediction_guard_window": 30,
            "prediction_guard_min_samples": 15,
        }
    )
    # A burst, a millisecond apart: arrival order is an order of its own.
    mirrored = [lying(f"r{i}", int(n), i / 1000) for i, n in enumerate(lengths)]
    fallen = simulate(mirrored, guarded, BINS, slots=4)
    unguarded = simulate(mirrored, guarded.model_copy(update={"prediction_guard": False}), BINS, slots=4)
    fcfs = simulate(mirrored, FCFS, BINS, slots=4)
    # Both predictions mirrored: the prompt estimates that order the queue rank wrongly, so
    # straight to arrival order (which preempts nothing either).
    assert [level.value for level in fallen.guard_levels] == ["trusting", "arrival-order"]
    assert unguarded.mean_latency > fcfs.mean_latency  # wrong predictions cost more than no order
    assert fallen.mean_latency < unguarded.mean_latency
    # True lengths keep their order. (Their preemptions may still be regretted: the probe's bins
    # are coarser than the exact prompt estimates a newcomer is compared with.)
    told = simulate([truthful(f"r{i}", int(n), i / 1000, estimate=n) for i, n in enumerate(lengths)], guarded, BINS, 4)
    assert "arrival-order" not in [level.value for level in told.guard_levels]
