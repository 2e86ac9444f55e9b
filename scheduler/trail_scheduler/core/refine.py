"""Bayesian refinement of a length belief.

A belief is a probability vector over the bins of a :class:`LengthBins` (or a batch
of them, shape ``[..., K]``). Between probe readings the belief drifts down by one
generated token per step; each probe reading multiplies it elementwise.
"""

from __future__ import annotations

import numpy as np

from trail_scheduler.core.bins import LengthBins

# Probe outputs are mixed with this much of a uniform distribution before the update,
# so one confident zero cannot wipe out a belief (and no product is ever all zero).
EVIDENCE_FLOOR = 1e-6


def _move_probabilities(bins: LengthBins) -> np.ndarray:
    """Per-token chance that mass leaves bin i for bin i-1: 1/width(i); bin 0 keeps its mass."""
    move = np.minimum(1.0, 1.0 / np.asarray(bins.widths, dtype=np.float64))
    move[0] = 0.0
    return move


def normalise(belief: np.ndarray) -> np.ndarray:
    """Renormalise along the last axis; an all-zero or non-finite row becomes uniform."""
    belief = np.where(np.isfinite(belief) & (belief > 0), belief, 0.0)
    # Scale by the row maximum first so that huge finite entries cannot overflow the sum.
    peak = belief.max(axis=-1, keepdims=True)
    belief = belief / np.where(peak > 0, peak, 1.0)
    total = belief.sum(axis=-1, keepdims=True)
    uniform = np.full_like(belief, 1.0 / belief.shape[-1])
    safe_total = np.where(total > 0, total, 1.0)
    return np.where(total > 0, belief / safe_total, uniform)


def shift(belief: np.ndarray, bins: LengthBins, tokens: int = 1) -> np.ndarray:
    """The prior after ``tokens`` more generated tokens: ``T^tokens · belief``."""
    if tokens < 0:
        raise ValueError(f"cannot shift a belief by a negative number of tokens ({tokens})")
    move = _move_probabilities(bins)
    q = np.asarray(belief, dtype=np.float64)
    for _ in range(tokens):
        leaving = q * move
        q = q - leaving
        q[..., :-1] += leaving[..., 1:]
    return q


def update(prior: np.ndarray, evidence: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Posterior ∝ prior ⊙ evidence^weight, renormalised; never NaN.

    ``weight`` 1 is Bayes' rule for independent readings. A probe's readings of successive
    tokens are far from independent (neighbouring states say nearly the same thing), so
    multiplying them all in makes the belief confident far beyond what it knows; a weight
    below 1 counts each reading as a fraction of one.
    If the floored evidence and the prior still share no mass (only possible when
    the prior itself is degenerate), the evidence alone is kept.
    """
    evidence = normalise(np.asarray(evidence, dtype=np.float64))
    k = evidence.shape[-1]
    evidence = (1.0 - EVIDENCE_FLOOR) * evidence + EVIDENCE_FLOOR / k
    if weight != 1.0:
        evidence = evidence**weight
    posterior = np.asarray(prior, dtype=np.float64) * evidence
    total = posterior.sum(axis=-1, keepdims=True)
    ok = np.isfinite(total) & (total > 0)
    return np.where(ok, posterior / np.where(ok, total, 1.0), evidence)


def refine(
    belief: np.ndarray, evidence: np.ndarray, bins: LengthBins, tokens: int = 1, weight: float = 1.0
) -> np.ndarray:
    """One refinement: shift by the tokens generated since the last reading, then update."""
    return update(shift(belief, bins, tokens), evidence, weight)


def expected_remaining(belief: np.ndarray, bins: LengthBins) -> np.ndarray | float:
    """Point estimate: ``Σ q_i · m_i`` with bin representatives ``m_i``."""
    value = np.asarray(belief, dtype=np.float64) @ np.asarray(bins.representatives, dtype=np.float64)
    return float(value) if np.ndim(value) == 0 else value


def remaining_spread(belief: np.ndarray, bins: LengthBins) -> np.ndarray | float:
    """How uncertain the point estimate is: the standard deviation of the remaining length
    under ``belief`` (bin representatives as the values)."""
    belief = np.asarray(belief, dtype=np.float64)
    values = np.asarray(bins.representatives, dtype=np.float64)
    variance = belief @ (values * values) - (belief @ values) ** 2
    spread = np.sqrt(np.maximum(variance, 0.0))
    return float(spread) if np.ndim(spread) == 0 else spread
