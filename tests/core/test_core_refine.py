"""Bayesian refinement: the shift, the update, and their numerical safety."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trail_scheduler.core import LengthBins, expected_remaining, normalise, refine, shift, update

BIN_LAYOUTS = [
    LengthBins.uniform(),
    LengthBins.uniform(4, 8.0),  # width 2
    LengthBins.log_spaced(),
    LengthBins((0.0, 0.5, 1.0, 3.0, math.inf)),  # bins narrower than one token
]

# Evidence as a probe or a buggy caller might produce it: zeros, subnormal and
# underflowing values, huge values, and garbage (negative, inf, NaN).
evidence_values = st.one_of(
    st.just(0.0),
    st.sampled_from([5e-324, 1e-320, 1e-300, 1e300, 1.7e308]),
    st.floats(0.0, 1.0),
    st.floats(allow_nan=True, allow_infinity=True),
)


def evidence_for(bins: LengthBins):
    return st.lists(evidence_values, min_size=bins.count, max_size=bins.count).map(np.array)


def assert_distribution(belief: np.ndarray) -> None:
    assert np.all(np.isfinite(belief))
    assert np.all(belief >= 0)
    assert belief.sum(axis=-1) == pytest.approx(1.0, abs=1e-9)


@st.composite
def belief_and_bins(draw):
    bins = draw(st.sampled_from(BIN_LAYOUTS))
    return normalise(draw(evidence_for(bins))), bins


@given(
    belief_and_bins().flatmap(
        lambda qb: st.tuples(
            st.just(qb),
            st.lists(st.one_of(st.integers(0, 300), evidence_for(qb[1])), max_size=30),
        )
    )
)
def test_beliefs_stay_normalised_and_finite_under_any_steps(case):
    """Any interleaving of shifts and updates with arbitrary evidence keeps a valid distribution."""
    (belief, bins), steps = case
    assert_distribution(belief)
    for step in steps:
        belief = shift(belief, bins, step) if isinstance(step, int) else update(belief, step)
        assert_distribution(belief)


@given(
    belief_and_bins().flatmap(lambda qb: st.tuples(st.just(qb), evidence_for(qb[1]))),
    st.floats(1e-6, 1.0),
)
def test_any_evidence_weight_keeps_a_distribution(case, weight):
    (belief, bins), evidence = case
    assert_distribution(update(belief, evidence, weight))
    assert_distribution(refine(belief, evidence, bins, 3, weight))


def test_a_weighted_reading_counts_as_that_fraction_of_one():
    """Two readings at weight 1/2 move a belief exactly as one reading at weight 1; a weight
    below 1 moves it the same way, less far."""
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    reading = np.array([0.7, 0.2, 0.05, 0.05])
    assert update(update(prior, reading, 0.5), reading, 0.5) == pytest.approx(update(prior, reading))
    tempered, full = update(prior, reading, 0.2), update(prior, reading)
    assert prior[0] < tempered[0] < full[0] and prior[3] > tempered[3] > full[3]
    assert update(np.full(4, 0.25), reading, 0.2) == pytest.approx(normalise(reading**0.2), rel=1e-5)


@given(st.sampled_from(BIN_LAYOUTS).flatmap(lambda b: st.tuples(st.just(b), evidence_for(b))))
def test_normalise_always_yields_a_distribution(case):
    """Overflowing, underflowing, all-zero and non-finite rows all normalise to a distribution."""
    _, raw = case
    assert_distribution(normalise(raw))


def test_normalise_handles_overflowing_and_subnormal_rows():
    """Huge finite entries must not overflow the sum; a lone subnormal entry is all the mass."""
    assert normalise(np.array([1e308, 1e308, 0.0])) == pytest.approx([0.5, 0.5, 0.0])
    assert normalise(np.array([5e-324, 0.0])) == pytest.approx([1.0, 0.0])
    assert normalise(np.array([0.0, math.nan, -1.0, math.inf])) == pytest.approx([0.25] * 4)


@pytest.mark.parametrize("bins", BIN_LAYOUTS)
def test_zero_evidence_where_the_prior_has_all_mass_keeps_the_prior(bins):
    """The evidence floor: a confident zero from the probe cannot wipe out (or NaN) a belief."""
    prior = np.zeros(bins.count)
    prior[-1] = 1.0
    evidence = np.zeros(bins.count)
    evidence[0] = 1.0
    posterior = update(prior, evidence)
    assert_distribution(posterior)
    assert posterior == pytest.approx(prior)


def test_informative_evidence_moves_the_belief():
    """With a flat prior, a confident probe reading decides the posterior."""
    bins = LengthBins.uniform()
    evidence = np.full(bins.count, 1e-4)
    evidence[3] = 1.0
    posterior = update(np.full(bins.count, 0.1), evidence)
    assert posterior.argmax() == 3
    assert posterior[3] > 0.99


@given(belief_and_bins(), st.integers(0, 200))
def test_shift_by_k_equals_k_shifts_by_one(qb, k):
    """Running the probe every k tokens applies T^k: the same as k single-token shifts."""
    belief, bins = qb
    stepwise = belief
    for _ in range(k):
        stepwise = shift(stepwise, bins)
    np.testing.assert_allclose(shift(belief, bins, k), stepwise, rtol=1e-12, atol=1e-15)


@given(belief_and_bins(), st.integers(0, 50))
def test_shift_conserves_mass_and_never_raises_the_estimate(qb, k):
    """Mass only moves down one bin at a time: total kept, expected length non-increasing."""
    belief, bins = qb
    shifted = shift(belief, bins, k)
    assert shifted.sum() == pytest.approx(1.0, abs=1e-12)
    assert expected_remaining(shifted, bins) <= expected_remaining(belief, bins) + 1e-9


def test_shift_rejects_negative_tokens():
    """Time only runs forward; a negative shift is a caller bug."""
    with pytest.raises(ValueError, match="negative number of tokens"):
        shift(np.full(10, 0.1), LengthBins.uniform(), -1)


@given(
    st.integers(2, 40).flatmap(
        lambda k: st.tuples(
            st.builds(LengthBins.uniform, st.just(k), st.floats(k * 1.0, 8192.0)),
            st.lists(st.floats(0, 1), min_size=k, max_size=k).map(np.array),
        )
    )
)
def test_uninformative_step_drops_the_estimate_by_the_mass_outside_bin_zero(case):
    """With uniform evidence each token lowers the expectation by exactly 1 − q₀ (bins ≥ 1 token wide)."""
    bins, raw = case
    belief = normalise(raw)
    after = refine(belief, np.ones(bins.count), bins)
    drop = expected_remaining(belief, bins) - expected_remaining(after, bins)
    assert drop == pytest.approx(1.0 - belief[0], abs=1e-9)


def test_uninformative_probe_counts_down_one_token_per_token():
    """Mass far from bin 0: 100 refinement steps with a uniform probe lower the estimate by ~100."""
    bins = LengthBins.uniform()
    belief = np.zeros(bins.count)
    belief[-1] = 1.0
    start = expected_remaining(belief, bins)
    for _ in range(100):
        belief = refine(belief, np.full(bins.count, 0.1), bins)
    assert start - expected_remaining(belief, bins) == pytest.approx(100.0, abs=0.01)


def test_batched_refinement_matches_row_by_row():
    """A [B, K] batch refines each request's belief independently."""
    bins = LengthBins.log_spaced()
    rng = np.random.default_rng(0)
    beliefs = normalise(rng.random((5, bins.count)))
    evidence = normalise(rng.random((5, bins.count)))
    batched = refine(beliefs, evidence, bins, tokens=8)
    for i in range(5):
        np.testing.assert_allclose(batched[i], refine(beliefs[i], evidence[i], bins, tokens=8))


def test_expected_remaining_uses_bin_representatives():
    """A one-hot belief's expectation is its bin's representative; batches give arrays."""
    bins = LengthBins.uniform()
    eye = np.eye(bins.count)
    assert expected_remaining(eye[2], bins) == pytest.approx(128.0)
    assert isinstance(expected_remaining(eye[2], bins), float)
    np.testing.assert_allclose(expected_remaining(eye, bins), bins.representatives)
