"""The prediction guard: its measures (censored rank correlations, regret), and the levels it
falls back to and recovers from."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trail_contract.admin_api import GuardLevel
from trail_contract.settings import PolicyName, SchedulerSettings
from trail_scheduler.core.guard import Displacement, PredictionGuard, kendall_standard_error, somers_d
from trail_scheduler.core.tracker import RequestPrediction

WINDOW, MIN_SAMPLES = 40, 10


def guard(enabled: bool = True, **knobs) -> PredictionGuard:
    knobs = {"prediction_guard_window": WINDOW, "prediction_guard_min_samples": MIN_SAMPLES, **knobs}
    return PredictionGuard(SchedulerSettings(prediction_guard=enabled, **knobs))


def predicted(first: float, prompt: float | None = None, generated: int = 0) -> RequestPrediction:
    """A request whose first prediction is ``first`` and prompt estimate ``prompt`` (the same
    unless given)."""
    return RequestPrediction(
        prompt_estimate=first if prompt is None else prompt, first_estimate=first, generated=generated
    )


def finish_all(g: PredictionGuard, lengths, first, prompt=None, in_flight=None) -> list[GuardLevel]:
    """Finish requests of these lengths, predicted ``first(length)`` (and ``prompt(length)``),
    nothing else in flight unless given; the level after each."""
    levels = []
    for i, length in enumerate(lengths):
        estimate = None if prompt is None else prompt(length)
        g.finished(f"f{g.samples}-{i}", predicted(first(length), estimate, length), length, in_flight or {})
        levels.append(g.level)
    return levels


def reference_somers_d(finished, censored):
    """Pair by pair: (prediction, length) finished, (prediction, generated) in flight."""
    agree = pairs = 0
    for (p, n), (q, m) in itertools.permutations(finished, 2):
        if n < m:
            pairs, agree = pairs + 1, agree + np.sign(q - p)
    for (p, n), (q, g) in itertools.product(finished, censored):
        if n < g:
            pairs, agree = pairs + 1, agree + np.sign(q - p)
    return (None if pairs == 0 else agree / pairs), pairs


observations = st.lists(st.tuples(st.integers(0, 20), st.integers(1, 40)), max_size=25)


@given(observations.filter(bool), observations)
def test_somers_d_counts_every_pair_whose_order_is_known(finished, censored):
    f, c = np.array(finished, float), np.array(censored, float).reshape(-1, 2)
    measured, pairs = somers_d(f[:, 0], f[:, 1], c[:, 0], c[:, 1])
    expected, expected_pairs = reference_somers_d(finished, censored)
    assert pairs == expected_pairs
    assert measured == (None if expected is None else pytest.approx(expected))


@given(st.lists(st.integers(1, 600), min_size=2, unique=True))
def test_somers_d_reads_order_only(values):
    x, none = np.array(values, float), np.empty(0)
    assert somers_d(np.exp(x / 100), x, none, none)[0] == pytest.approx(1.0)
    assert somers_d(-x, x, none, none)[0] == pytest.approx(-1.0)


def test_requests_in_flight_are_evidence_before_they_finish():
    """Finished requests all of one length say nothing of each other; the ones running past
    them do: here every one predicted longer finished first."""
    g = guard()
    running = {f"r{i}": predicted(10.0, generated=100) for i in range(4)}
    finish_all(g, [50] * MIN_SAMPLES, lambda length: 500.0, in_flight=running)
    assert (g.rank_correlation, g.pairs) == (-1.0, 4 * MIN_SAMPLES)
    assert g.level is GuardLevel.ARRIVAL_ORDER


def test_the_finishing_request_is_not_counted_twice():
    g = guard()
    g.finished("a", predicted(1.0), 5, {})
    g.finished("b", predicted(2.0), 9, {"b": predicted(2.0, generated=9)})
    assert (g.rank_correlation, g.pairs) == (1.0, 1)


@given(st.lists(st.integers(1, 600), min_size=MIN_SAMPLES * 6, max_size=MIN_SAMPLES * 12), st.floats(0.1, 10.0))
def test_predictions_that_rank_well_never_trip_it(values, scale):
    g = guard()
    levels = finish_all(g, values, lambda length: scale * length + 3)
    assert set(levels) == {GuardLevel.TRUSTING}


@given(st.lists(st.integers(1, 600), min_size=MIN_SAMPLES - 1, max_size=MIN_SAMPLES - 1))
def test_no_level_changes_before_the_minimum_samples(values):
    g = guard()
    assert set(finish_all(g, values, lambda length: 1000 - length)) == {GuardLevel.TRUSTING}


def reversed_(length):
    return 1000.0 - length


SPREAD = list(range(1, 200, 7)) * 3


def test_wrong_first_predictions_stop_preemption_and_keep_the_prompt_estimates_order():
    """The first prediction decides preemption, the prompt estimate the order: each level is
    judged by the prediction it acts on."""
    g = guard()
    levels = finish_all(g, SPREAD, reversed_, prompt=float)
    assert levels.index(GuardLevel.NO_PREEMPTION) == MIN_SAMPLES - 1  # the first time it may
    assert set(levels[MIN_SAMPLES - 1 :]) == {GuardLevel.NO_PREEMPTION}
    assert g.effective(SchedulerSettings(c=2.0)) == SchedulerSettings(c=0.0)
    assert g.rank_correlation < 0 < g.prompt_rank_correlation


def test_wrong_prompt_estimates_fall_back_to_arrival_order_and_good_ones_bring_preemption_back():
    g = guard()
    levels = finish_all(g, SPREAD, reversed_)
    assert levels.index(GuardLevel.ARRIVAL_ORDER) == MIN_SAMPLES - 1
    assert g.effective(SchedulerSettings()).policy is PolicyName.FCFS
    # The prompt estimates rank well again, the first predictions not yet: the order comes back first.
    levels = finish_all(g, SPREAD * 2, reversed_, prompt=float)
    assert GuardLevel.NO_PREEMPTION in levels and GuardLevel.TRUSTING not in levels
    # Then both: after fresh evidence (min_samples finishes since the last change), trusting.
    levels = finish_all(g, SPREAD * 2, float)
    back = levels.index(GuardLevel.TRUSTING)
    assert back >= MIN_SAMPLES - 1 and set(levels[back:]) == {GuardLevel.TRUSTING}
    assert g.effective(SchedulerSettings()) == SchedulerSettings()


def test_recovery_needs_the_hysteresis_margin():
    """A correlation between the threshold and threshold + hysteresis keeps the fallback."""
    g = guard(prediction_guard_min_rank_correlation=0.5, prediction_guard_hysteresis=0.6)
    finish_all(g, SPREAD, reversed_)
    assert g.level is GuardLevel.ARRIVAL_ORDER
    rng = np.random.default_rng(0)
    noisy = finish_all(g, SPREAD * 3, lambda length: length + float(rng.normal(0, 40)))
    assert 0.5 < g.prompt_rank_correlation < 1.1 - 0.05  # above the threshold, short of the margin
    assert set(noisy) == {GuardLevel.ARRIVAL_ORDER}


def test_a_reading_within_a_standard_error_of_the_threshold_does_not_trip_it():
    g = guard(prediction_guard_min_rank_correlation=0.95, prediction_guard_window=MIN_SAMPLES)
    lengths = list(range(1, MIN_SAMPLES + 1))
    rank = {length: i for i, length in enumerate(lengths)}
    rank[1], rank[2], rank[3] = 2, 0, 1  # two pairs of 45 out of order
    finish_all(g, lengths, lambda length: float(rank[length]))
    assert g.rank_correlation + kendall_standard_error(MIN_SAMPLES) >= 0.95 > g.rank_correlation
    assert g.level is GuardLevel.TRUSTING


def displace(g: PredictionGuard, displacer: str, victim: str, displacer_generated=0, victim_generated=0) -> None:
    g.preempted(Displacement(displacer, victim, displacer_generated, victim_generated))


def test_a_preemption_is_regretted_when_the_victim_had_less_left_than_its_displacer():
    g = guard()
    displace(g, "new", "old", displacer_generated=0, victim_generated=30)
    g.finished("old", predicted(50.0), 40, {"new": predicted(10.0, generated=5)})  # 10 left when displaced
    assert g.resolved_preemptions == 0  # its displacer may still finish within 10
    g.finished("new", predicted(10.0), 25, {})  # 25 left
    assert (g.resolved_preemptions, g.regret_ratio) == (1, 1.0)
    displace(g, "short", "long", victim_generated=5)
    g.finished("short", predicted(5.0), 5, {})
    g.finished("long", predicted(400.0), 300, {})
    assert g.regret_ratio == 0.5


def test_a_preemption_is_settled_as_soon_as_the_one_still_running_has_outrun_the_other():
    g = guard()
    displace(g, "new", "old", displacer_generated=0, victim_generated=30)
    g.finished("old", predicted(50.0), 40, {"new": predicted(10.0, generated=11)})  # 10 left; new ran 11
    assert (g.resolved_preemptions, g.regret_ratio) == (1, 1.0)
    displace(g, "short", "long", displacer_generated=2, victim_generated=5)
    g.finished("short", predicted(5.0), 6, {"long": predicted(400.0, generated=8)})  # 4 left; long ran 3 since
    assert g.resolved_preemptions == 1
    g.finished("other", predicted(5.0), 6, {"long": predicted(400.0, generated=9)})  # now 4 since
    assert (g.resolved_preemptions, g.regret_ratio) == (2, 0.5)
    assert not g._open and not g._lengths


def test_an_aborted_request_leaves_its_preemptions_unresolved():
    g = guard()
    displace(g, "new", "old")
    g.aborted("new")
    g.finished("old", predicted(5.0), 5, {})
    assert g.resolved_preemptions == 0 and not g._open and not g._lengths


@given(st.lists(st.tuples(st.integers(0, 99), st.integers(1, 500)), min_size=MIN_SAMPLES, max_size=MIN_SAMPLES))
def test_regretted_preemptions_stop_preemption_even_while_the_ranking_is_good(pairs):
    g = guard()
    for i, (victim_left, extra) in enumerate(pairs):  # each victim had less left than its displacer
        displace(g, f"d{i}", f"v{i}", victim_generated=100 - victim_left)
        g.finished(f"v{i}", predicted(100.0), 100, {})
        g.finished(f"d{i}", predicted(float(victim_left + extra)), victim_left + extra, {})  # predicted exactly
    assert (g.level, g.regret_ratio) == (GuardLevel.NO_PREEMPTION, 1.0)
    assert g.rank_correlation is None or g.rank_correlation > 0.5
    # The ranking is good, so preemption is tried again after fresh evidence, regret window empty.
    finish_all(g, list(range(1, 100, 3)), float)
    assert g.level is GuardLevel.TRUSTING and g.regret_ratio is None


def test_switched_off_it_measures_but_never_falls_back():
    g = guard(enabled=False)
    finish_all(g, list(range(1, 200, 3)), reversed_)
    assert g.level is GuardLevel.TRUSTING and g.rank_correlation < 0
    g.follow(SchedulerSettings(prediction_guard=True, prediction_guard_min_samples=MIN_SAMPLES))
    finish_all(g, list(range(1, 200, 3)), reversed_)
    assert g.level is GuardLevel.ARRIVAL_ORDER
    g.follow(SchedulerSettings(prediction_guard=False))
    assert g.level is GuardLevel.TRUSTING


def test_the_window_keeps_the_last_finishes():
    g = guard()
    finish_all(g, list(range(100)), float)
    assert g.samples == WINDOW
    g.follow(SchedulerSettings(prediction_guard=True, prediction_guard_window=10, prediction_guard_min_samples=50))
    assert (g.samples, g.min_samples) == (10, 10)  # the minimum is at most the window
