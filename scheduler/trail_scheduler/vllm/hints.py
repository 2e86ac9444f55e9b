"""A request's TRAIL hints: what the API server (or, for benchmarks, a trusted client)
puts in ``sampling_params.extra_args`` for the scheduler to start from.

They cross a process boundary as plain data from outside the engine, so each is checked
here, and a malformed one counts as absent rather than failing the request.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trail_scheduler.core.bins import LengthBins

HINT_PREFIX = "trail_"  # sampling_params.extra_args keys the API server controls (clients' are dropped)
PROMPT_ESTIMATE_ARG = "trail_prompt_estimate"  # set by the API server's prompt predictor
PROMPT_DISTRIBUTION_ARG = "trail_prompt_distribution"  # its {"edges", "probabilities"} (the refinement's prior)
MAX_HINT_BINS = 1024
ORACLE_LENGTH_ARG = "trail_oracle_length"  # benchmarks only (trail-oracle), from a trusted client


def request_hints(sampling_params) -> dict[str, Any]:
    """A request's hints, checked, as ``PredictionTracker.add`` takes them."""
    extra = (sampling_params.extra_args if sampling_params else None) or {}
    return {
        "prompt_estimate": _finite_or_none(extra.get(PROMPT_ESTIMATE_ARG)),
        "oracle_length": _finite_or_none(extra.get(ORACLE_LENGTH_ARG)),
        "prompt_distribution": _distribution_or_none(extra.get(PROMPT_DISTRIBUTION_ARG)),
    }


def _distribution_or_none(value) -> tuple[LengthBins, np.ndarray] | None:
    """A prompt distribution hint, checked; a malformed one counts as absent."""
    try:
        edges, probabilities = value["edges"], value["probabilities"]
        if not (isinstance(edges, list | tuple) and 3 <= len(edges) <= MAX_HINT_BINS + 1):
            return None
        bins = LengthBins.from_list(list(edges))
        if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in probabilities):
            return None
        probabilities = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    if probabilities.shape != (bins.count,) or not np.isfinite(probabilities).all() or (probabilities < 0).any():
        return None
    total = probabilities.sum()
    return (bins, probabilities / total) if total > 0 else None


def _finite_or_none(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None
