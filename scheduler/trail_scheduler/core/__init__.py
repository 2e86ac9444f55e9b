"""The TRAIL core: length bins, Bayesian refinement and the scheduling policy.

Pure and deterministic; knows nothing of vLLM or Kubernetes (adapters translate).
"""

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.policy import (
    Decision,
    Policy,
    PolicyName,
    Room,
    RunningRequest,
    SchedulerSettings,
    WaitingRequest,
    is_preemptible,
)
from trail_scheduler.core.refine import expected_remaining, normalise, refine, shift, update

__all__ = [
    "Decision",
    "LengthBins",
    "Policy",
    "PolicyName",
    "Room",
    "RunningRequest",
    "SchedulerSettings",
    "WaitingRequest",
    "expected_remaining",
    "is_preemptible",
    "normalise",
    "refine",
    "shift",
    "update",
]
