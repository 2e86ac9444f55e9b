"""The prediction guard: its two measures, and the levels it falls back to and recovers from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trail_contract.admin_api import GuardLevel
from trail_contract.settings import PolicyName, SchedulerSettings
from trail_scheduler.core.guard import Displacement, PredictionGuard, spearman

WINDOW, MIN_SAMPLES = 40, 10


def guard(enabled: bool = True, **knobs) -> PredictionGuard:
    knobs = {"prediction_guard_window": WINDOW, "prediction_guard_min_samples": MIN_SAMPLES, **knobs}
    return PredictionGuard(SchedulerSettings(prediction_guard=enabled, **knobs))


def finish_all(g: PredictionGuard, lengths, predict) -> list[GuardLevel]:
    """Finish requests of these lengths, each predicted ``predict(length)``; the level after each."""
    levels = []
    for i, length in enumerate(lengths):
        g.finished(f"f{g.samples}-{i}", predict(length), length)
        levels.append(g.level)
    return levels


def reference_spearman(a, b) -> float:
    def ranks(values):
        return [sum(v < x for v in values) + (sum(v == x for v in values) + 1) / 2 for x in values]

    ra, rb = np.array(ranks(a)), np.array(ranks(b))
    return float(np.corrcoef(ra, rb)[0, 1])


lengths = st.lists(st.integers(1, 600), min_size=2, max_size=60)


@given(st.data(), lengths)
def test_spearman_is_pearsons_on_average_ranks(data, values):
    others = data.draw(st.lists(st.integers(0, 50), min_size=len(values), max_size=len(values)))
    measured = spearman(np.array(values, float), np.array(others, float))
    if len(set(values)) == 1 or len(set(others)) == 1:
        assert measured is None
    else:
        assert measured == pytest.approx(reference_spearman(values, others), abs=1e-9)


@given(lengths.filter(lambda v: len(set(v)) > 1))
def test_spearman_reads_order_only(values):
    x = np.array(values, float)
    assert spearman(x, np.exp(x / 100)) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


@given(st.lists(st.integers(1, 600), min_size=MIN_SAMPLES * 6, max_size=MIN_SAMPLES * 12), st.floats(0.1, 10.0))
def test_predictions_that_rank_well_never_trip_it(values, scale):
    g = guard()
    levels = finish_all(g, values, lambda length: scale * length + 3)
    assert set(levels) == {GuardLevel.TRUSTING}


@given(st.lists(st.integers(1, 600), min_size=MIN_SAMPLES - 1, max_size=MIN_SAMPLES - 1))
def test_no_level_changes_before_the_minimum_samples(values):
    g = guard()
    assert set(finish_all(g, values, lambda length: 1000 - length)) == {GuardLevel.TRUSTING}


def test_reversed_predictions_stop_preemption_then_reordering_and_good_ones_bring_them_back():
    g = guard()
    spread = list(range(1, 200, 7)) * 3

    def reversed_(length):
        return 1000.0 - length

    levels = finish_all(g, spread[:MIN_SAMPLES], reversed_)
    assert levels[-2:] == [GuardLevel.TRUSTING, GuardLevel.NO_PREEMPTION]  # the first time it may
    assert g.effective(SchedulerSettings(c=2.0)) == SchedulerSettings(c=0.0)
    first_trip = MIN_SAMPLES - 1
    levels = levels + finish_all(g, spread[MIN_SAMPLES:], reversed_)
    second_trip = levels.index(GuardLevel.ARRIVAL_ORDER)
    assert second_trip == first_trip + MIN_SAMPLES  # fresh evidence for each step down
    assert g.effective(SchedulerSettings()).policy is PolicyName.FCFS
    assert g.rank_correlation < 0

    # Good predictions again: the window turns over, then one level at a time comes back.
    levels = finish_all(g, spread * 2, lambda length: float(length))
    back = [levels.index(GuardLevel.NO_PREEMPTION), levels.index(GuardLevel.TRUSTING)]
    assert back[1] >= back[0] + MIN_SAMPLES
    assert g.level is GuardLevel.TRUSTING and g.effective(SchedulerSettings()) == SchedulerSettings()


def test_recovery_needs_the_hysteresis_margin():
    """A correlation between the threshold and threshold + hysteresis keeps the fallback."""
    g = guard(prediction_guard_min_rank_correlation=0.5, prediction_guard_hysteresis=0.6)
    spread = list(range(1, 200, 7)) * 3
    finish_all(g, spread, lambda length: 1000.0 - length)
    assert g.level is GuardLevel.ARRIVAL_ORDER
    rng = np.random.default_rng(0)
    noisy = finish_all(g, spread * 3, lambda length: length + float(rng.normal(0, 40)))
    assert 0.5 < g.rank_correlation < 1.1 - 0.05  # above the threshold, short of the margin
    assert set(noisy) == {GuardLevel.ARRIVAL_ORDER}


def displace(g: PredictionGuard, displacer: str, victim: str, displacer_generated=0, victim_generated=0) -> None:
    g.preempted(Displacement(displacer, victim, displacer_generated, victim_generated))


def test_a_preemption_is_regretted_when_the_victim_had_less_left_than_its_displacer():
    g = guard()
    displace(g, "new", "old", displacer_generated=0, victim_generated=30)
    g.finished("old", 50.0, 40)  # 10 left when displaced
    assert g.resolved_preemptions == 0  # its displacer has not finished
    g.finished("new", 10.0, 25)  # 25 left
    assert (g.resolved_preemptions, g.regret_ratio) == (1, 1.0)
    displace(g, "short", "long", victim_generated=5)
    g.finished("short", 5.0, 5)
    g.finished("long", 400.0, 300)
    assert g.regret_ratio == 0.5


def test_an_aborted_request_leaves_its_preemptions_unresolved():
    g = guard()
    displace(g, "new", "old")
    g.aborted("new")
    g.finished("old", 5.0, 5)
    assert g.resolved_preemptions == 0 and not g._open and not g._lengths


@given(st.lists(st.tuples(st.integers(0, 99), st.integers(1, 500)), min_size=MIN_SAMPLES, max_size=MIN_SAMPLES))
def test_regretted_preemptions_stop_preemption_even_while_the_ranking_is_good(pairs):
    g = guard()
    for i, (victim_left, extra) in enumerate(pairs):  # each victim had less left than its displacer
        displace(g, f"d{i}", f"v{i}", victim_generated=100 - victim_left)
        g.finished(f"v{i}", 100.0, 100)
        g.finished(f"d{i}", float(victim_left + extra), victim_left + extra)  # predicted exactly
    assert (g.level, g.regret_ratio) == (GuardLevel.NO_PREEMPTION, 1.0)
    assert g.rank_correlation is None or g.rank_correlation > 0.5
    # The ranking is good, so preemption is tried again after fresh evidence, regret window empty.
    finish_all(g, list(range(1, 100, 3)), float)
    assert g.level is GuardLevel.TRUSTING and g.regret_ratio is None


def test_switched_off_it_measures_but_never_falls_back():
    g = guard(enabled=False)
    finish_all(g, list(range(1, 200, 3)), lambda length: 1000.0 - length)
    assert g.level is GuardLevel.TRUSTING and g.rank_correlation < 0
    g.follow(SchedulerSettings(prediction_guard=True, prediction_guard_min_samples=MIN_SAMPLES))
    finish_all(g, list(range(1, 200, 3)), lambda length: 1000.0 - length)
    assert g.level is GuardLevel.ARRIVAL_ORDER
    g.follow(SchedulerSettings(prediction_guard=False))
    assert g.level is GuardLevel.TRUSTING


def test_the_window_keeps_the_last_finishes():
    g = guard()
    finish_all(g, list(range(100)), float)
    assert g.samples == WINDOW
    g.follow(SchedulerSettings(prediction_guard=True, prediction_guard_window=10, prediction_guard_min_samples=50))
    assert (g.samples, g.min_samples) == (10, 10)  # the minimum is at most the window
