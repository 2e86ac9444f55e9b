"""The per-request prediction bookkeeping the vLLM scheduler relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trail_contract.settings import RefinementPrior, SchedulerSettings
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.refine import shift
from trail_scheduler.core.tracker import PredictionTracker

BINS = LengthBins.uniform(10, 512)


def one_hot(index: int) -> np.ndarray:
    row = np.zeros(BINS.count)
    row[index] = 1.0
    return row


def test_unknown_requests_count_as_the_median_bin_until_read():
    tracker = PredictionTracker(BINS)
    tracker.add("a")
    tracker.add("b", prompt_estimate=40)
    assert tracker.get("a").predicted_remaining == BINS.representatives[4]
    assert tracker.get("b").predicted_remaining == 40
    assert tracker.get("b").initial_prediction == 40


def test_estimates_count_down_between_readings_and_never_go_negative():
    tracker = PredictionTracker(BINS)
    tracker.add("a", prompt_estimate=3)
    tracker.advance("a", 2)
    assert tracker.get("a").predicted_remaining == 1
    tracker.advance("a", 5)
    assert tracker.get("a").predicted_remaining == 0


def test_first_reading_fixes_the_initial_prediction_as_a_total_length():
    tracker = PredictionTracker(BINS)
    tracker.add("a", prompt_estimate=500)
    tracker.advance("a", 1)  # the prefill step samples the first token
    tracker.observe(["a"], one_hot(1)[None], [True])
    state = tracker.get("a")
    assert state.belief_estimate == pytest.approx(BINS.representatives[1], rel=1e-3)
    assert state.initial_prediction == pytest.approx(BINS.representatives[1] + 1, rel=1e-3)
    # A later reading refines the estimate, not r.
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(0)[None], [False])
    assert tracker.get("a").initial_prediction == pytest.approx(BINS.representatives[1] + 1, rel=1e-3)
    assert tracker.get("a").predicted_remaining < BINS.representatives[1]


def test_prefill_reading_of_a_resumed_request_keeps_its_belief():
    tracker = PredictionTracker(BINS)
    tracker.add("a")
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(2)[None], [True])
    before = tracker.get("a").belief.copy()
    tracker.observe(["a"], one_hot(9)[None], [True])  # recompute after preemption re-reads the prompt
    assert np.array_equal(tracker.get("a").belief, before)


def test_finish_reports_each_stage_error_against_the_true_length():
    tracker = PredictionTracker(BINS)
    tracker.add("a", prompt_estimate=100)
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(0)[None], [True])  # first estimate ≈ 25.6 + 1
    tracker.advance("a", 9)
    errors = tracker.finish("a", true_length=10)
    assert errors.prompt == 90
    assert errors.first == pytest.approx(abs(BINS.representatives[0] + 1 - 10), rel=1e-3)
    assert errors.refined is not None and errors.refined >= 0
    assert tracker.get("a") is None and tracker.finish("a", 10) is None


def test_new_bins_restart_beliefs_but_keep_estimates():
    tracker = PredictionTracker(BINS)
    tracker.add("a")
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(3)[None], [True])
    estimate = tracker.get("a").predicted_remaining
    tracker.set_bins(LengthBins.uniform(8, 256))
    assert tracker.get("a").belief is None
    assert tracker.get("a").predicted_remaining == pytest.approx(estimate)
    with pytest.raises(ValueError, match="bins"):
        tracker.observe(["a"], one_hot(3)[None], [False])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.lists(st.floats(0, 1), min_size=10, max_size=10)), max_size=30),
    st.integers(0, 40),
)
def test_beliefs_stay_normalised_and_estimates_finite(steps, probe_ranks_after):
    tracker = PredictionTracker(BINS, SchedulerSettings(probe_ranks_after=probe_ranks_after))
    tracker.add("a")
    first = True
    for tokens, evidence in steps:
        tracker.advance("a", tokens)
        tracker.observe(["a"], np.asarray(evidence)[None], [first])
        first = False
        state = tracker.get("a")
        assert np.isclose(state.belief.sum(), 1.0) and np.all(state.belief >= 0)
        assert np.isfinite(state.predicted_remaining) and state.predicted_remaining >= 0


PROMPT_BINS = LengthBins.uniform(5, 512)  # the prompt predictor's own, coarser bins
PROMPT_DISTRIBUTION = (PROMPT_BINS, np.array([0.0, 0.0, 0.0, 0.0, 1.0]))  # "long": 410-512 tokens


def started(prior: RefinementPrior, reading: np.ndarray, distribution=PROMPT_DISTRIBUTION):
    tracker = PredictionTracker(BINS, SchedulerSettings(refinement_prior=prior))
    tracker.add("a", prompt_estimate=460, prompt_distribution=distribution)
    tracker.advance("a", 1)
    tracker.observe(["a"], reading[None], [True])
    return tracker, tracker.get("a")


def test_the_prompt_prior_starts_from_the_prompt_predictors_distribution_and_skips_the_prompt_reading():
    """A confident "short" reading of the prompt does not move a belief that starts from the
    prompt predictor's "long" (rebinned onto the probe's bins); a token's reading then does."""
    tracker, state = started(RefinementPrior.PROMPT, one_hot(0))
    assert state.belief == pytest.approx([0] * 8 + [0.5, 0.5])
    assert state.initial_prediction == pytest.approx(461.8)  # (435.2 + 486.4) / 2 + 1 generated
    tracker.advance("a", 1)
    tracker.observe(["a"], np.full(BINS.count, 0.1)[None], [False])  # an uninformative token reading
    assert state.belief[8:].sum() == pytest.approx(1 - 0.5 / 51.2)  # one token's drift into bin 7
    tracker.observe(["a"], (one_hot(8) * 0.9 + 0.01)[None], [False])
    assert state.belief[8] > 0.8


def test_both_folds_the_prompt_reading_into_the_prompt_prior():
    _, state = started(RefinementPrior.BOTH, 0.5 * one_hot(8) + 0.1 * one_hot(9) + 0.04)
    weights = np.array([0.54, 0.14])
    assert state.belief[8:] == pytest.approx(weights / weights.sum(), rel=1e-4)
    assert state.belief[:8].sum() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("prior", "distribution"),
    [(RefinementPrior.PROBE, PROMPT_DISTRIBUTION), (RefinementPrior.PROMPT, None), (RefinementPrior.BOTH, None)],
    ids=["probe-prior", "prompt-prior-without-distribution", "both-without-distribution"],
)
def test_the_probe_prior_and_a_request_without_a_distribution_start_from_the_prompt_reading(prior, distribution):
    _, state = started(prior, one_hot(0), distribution)
    assert state.belief[0] == pytest.approx(1.0, abs=1e-5)
    assert state.initial_prediction == pytest.approx(BINS.representatives[0] + 1, rel=1e-3)


def test_the_evidence_weight_tempers_the_first_reading_and_every_token_reading_and_can_change_live():
    """Under weight w a reading r moves the belief as r^w: the first reading of the prompt
    and each token's reading alike; a new weight applies from the next reading on."""
    reading = 0.6 * one_hot(2) + 0.04
    full, tempered = PredictionTracker(BINS), PredictionTracker(BINS, SchedulerSettings(evidence_weight=0.25))
    for tracker in (full, tempered):
        tracker.add("a", prompt_estimate=300)
        tracker.advance("a", 1)
        tracker.observe(["a"], reading[None], [True])
    assert full.get("a").belief == pytest.approx(reading / reading.sum(), rel=1e-4)
    assert tempered.get("a").belief == pytest.approx(reading**0.25 / (reading**0.25).sum(), rel=1e-4)
    before = tempered.get("a").belief.copy()
    for tracker in (full, tempered):
        tracker.advance("a", 1)
        tracker.observe(["a"], reading[None], [False])
    assert tempered.get("a").belief[2] < full.get("a").belief[2]
    assert before[2] < tempered.get("a").belief[2]
    tempered.evidence_weight = 1.0
    again = tempered.get("a").belief.copy()
    tempered.advance("a", 1)
    tempered.observe(["a"], reading[None], [False])
    expected = shift(again, BINS, 1) * reading
    assert tempered.get("a").belief == pytest.approx(expected / expected.sum(), rel=1e-4)


def test_the_prompt_estimate_ranks_until_the_request_has_generated_probe_ranks_after_tokens():
    """Until then the belief is refined but not used; from the first reading at or past it on,
    the belief ranks. A new value applies from the next reading on."""
    tracker = PredictionTracker(BINS, SchedulerSettings(probe_ranks_after=3))
    tracker.add("a", prompt_estimate=40)
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(8)[None], [True])
    state = tracker.get("a")
    assert state.belief_estimate == pytest.approx(BINS.representatives[8], rel=1e-3)
    assert state.initial_prediction == pytest.approx(BINS.representatives[8] + 1, rel=1e-3)  # r is the probe's
    assert state.predicted_remaining == 39  # the prompt estimate, counted down
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(8)[None], [False])
    assert state.predicted_remaining == 38
    tracker.advance("a", 1)
    assert state.predicted_remaining == 37  # three generated, but not read yet
    tracker.observe(["a"], one_hot(8)[None], [False])
    assert state.predicted_remaining == pytest.approx(BINS.representatives[8], rel=0.05)
    assert state.history[:3] == [40, 39, 38]
    tracker.follow(SchedulerSettings(probe_ranks_after=1000))
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(8)[None], [False])
    assert state.predicted_remaining > 100  # once ranked on its belief, a request stays so

    tracker.add("b", prompt_estimate=40)
    tracker.advance("b", 1)
    tracker.observe(["b"], one_hot(8)[None], [True])
    assert tracker.get("b").predicted_remaining == 39
    tracker.follow(SchedulerSettings())  # 0: from the next reading on
    tracker.advance("b", 1)
    tracker.observe(["b"], one_hot(8)[None], [False])
    assert tracker.get("b").predicted_remaining > 100


@pytest.mark.parametrize("probe_ranks_after", [0, 1])
def test_by_default_the_belief_ranks_from_the_first_reading(probe_ranks_after):
    tracker = PredictionTracker(BINS, SchedulerSettings(probe_ranks_after=probe_ranks_after))
    tracker.add("a", prompt_estimate=40)
    tracker.advance("a", 1)
    tracker.observe(["a"], one_hot(8)[None], [True])
    assert tracker.get("a").predicted_remaining == pytest.approx(BINS.representatives[8], rel=1e-3)


def test_the_spread_is_the_distribution_that_ranks_the_request():
    """The prompt predictor's distribution's until the belief ranks, then the belief's; none
    (0) without a distribution."""
    two_bins = np.zeros(BINS.count)
    two_bins[[0, 4]] = 0.5
    tracker = PredictionTracker(BINS, SchedulerSettings(probe_ranks_after=2))
    tracker.add("a", prompt_estimate=100, prompt_distribution=(BINS, two_bins))
    tracker.add("b", prompt_estimate=100)
    values = np.asarray(BINS.representatives)
    assert tracker.get("a").remaining_spread == pytest.approx((values[4] - values[0]) / 2)
    assert tracker.get("b").remaining_spread == 0.0
    tracker.observe(["a"], one_hot(3)[None], [True])  # read, not ranking yet
    assert tracker.get("a").remaining_spread == pytest.approx((values[4] - values[0]) / 2)
    tracker.advance("a", 2)
    tracker.observe(["a"], one_hot(3)[None], [False])
    assert tracker.get("a").belief_ranks and tracker.get("a").remaining_spread < 1.0  # a one-hot belief
