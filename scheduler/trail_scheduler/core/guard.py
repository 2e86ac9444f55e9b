"""The prediction guard: whether the length predictions are worth acting on, measured on
the requests that finish, and what the scheduler falls back to when they are not.

Two measures over sliding windows:

- **rank correlation**: Spearman's, between each finished request's first prediction (the
  ``r`` of the preemption rule) and the length it turned out to have, over the last
  ``window`` finished requests. Shortest-first needs the order right, not the values.
- **regret ratio**: of the last ``window`` preemptions whose two requests both finished, the
  share where the victim's remaining length at the preemption was shorter than its
  displacer's: the preemption made things worse.

Three levels, each falling back further: ``trusting`` (the policy as set), ``no-preemption``
(as ``c = 0``: still ranks, never displaces a started request), ``arrival-order`` (first come,
first served). Weak measures move one level down, recovered ranking one level up. No level
changes before ``min_samples`` samples, nor within ``min_samples`` finished requests of the
last change (fresh evidence for each step), and recovering needs the correlation above its
threshold by ``hysteresis``. Preempting is what regret measures, so while it is off regret
cannot recover: once the ranking has, preemption is tried again and the regret window starts
empty. With the guard switched off it still measures; only the level stays ``trusting``.

Pure and deterministic: the adapter reports finishes, aborts and preemptions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from trail_contract.admin_api import GuardLevel
from trail_contract.settings import PolicyName, SchedulerSettings


def spearman(first: np.ndarray, second: np.ndarray) -> float | None:
    """Spearman's rank correlation (ties share their average rank); None where either side
    is constant: it then says nothing about how well one ranks the other."""
    a, b = _average_ranks(first), _average_ranks(second)
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return None if scale == 0.0 else float((a * b).sum() / scale)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse]


@dataclass(frozen=True)
class Displacement:
    """A preemption: who took whose place, and how many tokens each had generated then."""

    displacer: str
    victim: str
    displacer_generated: int
    victim_generated: int


class PredictionGuard:
    """Measures the predictions on finished requests and sets the level of fallback."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self.level = GuardLevel.TRUSTING
        self._finished: deque[tuple[float, float]] = deque()  # (first prediction, length)
        self._regrets: deque[bool] = deque()
        self._open: dict[str, list[Displacement]] = {}  # by both ends, until both finish
        self._lengths: dict[str, int] = {}  # finished requests still in an open displacement
        self._since_change = 0  # finished requests since the level last changed
        self.rank_correlation: float | None = None
        self.follow(settings)

    def follow(self, settings: SchedulerSettings) -> None:
        self.enabled = settings.prediction_guard
        self.window = settings.prediction_guard_window
        self.min_samples = min(settings.prediction_guard_min_samples, self.window)
        self.min_rank_correlation = settings.prediction_guard_min_rank_correlation
        self.max_regret_ratio = settings.prediction_guard_max_regret_ratio
        self.hysteresis = settings.prediction_guard_hysteresis
        self._finished = deque(self._finished, maxlen=self.window)
        self._regrets = deque(self._regrets, maxlen=self.window)
        self._measure_ranking()
        if not self.enabled:
            self.level = GuardLevel.TRUSTING

    @property
    def regret_ratio(self) -> float | None:
        return sum(self._regrets) / len(self._regrets) if self._regrets else None

    @property
    def samples(self) -> int:
        return len(self._finished)

    @property
    def resolved_preemptions(self) -> int:
        return len(self._regrets)

    def effective(self, settings: SchedulerSettings) -> SchedulerSettings:
        """The settings the scheduler decides by at this level."""
        if self.level is GuardLevel.NO_PREEMPTION:
            return settings.model_copy(update={"c": 0.0})
        if self.level is GuardLevel.ARRIVAL_ORDER:
            return settings.model_copy(update={"policy": PolicyName.FCFS})
        return settings

    # -- what the scheduler reports -------------------------------------------------------
    def preempted(self, displacement: Displacement) -> None:
        for end in (displacement.displacer, displacement.victim):
            self._open.setdefault(end, []).append(displacement)

    def finished(self, request_id: str, first_prediction: float, length: int) -> bool:
        """A request finished with ``length`` generated tokens; True if the level changed."""
        self._finished.append((first_prediction, float(length)))
        self._measure_ranking()
        if request_id in self._open:
            self._lengths[request_id] = length
            self._resolve(request_id)
        self._since_change += 1
        return self._decide_level()

    def aborted(self, request_id: str) -> None:
        """Its length says nothing: its displacements are dropped unresolved."""
        for displacement in self._open.pop(request_id, []):
            other = displacement.victim if displacement.displacer == request_id else displacement.displacer
            self._forget(other, displacement)
        self._lengths.pop(request_id, None)

    def _resolve(self, request_id: str) -> None:
        for displacement in list(self._open[request_id]):
            displacer, victim = displacement.displacer, displacement.victim
            if displacer in self._lengths and victim in self._lengths:
                victim_left = self._lengths[victim] - displacement.victim_generated
                displacer_left = self._lengths[displacer] - displacement.displacer_generated
                self._regrets.append(victim_left < displacer_left)
                self._forget(displacer, displacement)
                self._forget(victim, displacement)

    def _forget(self, request_id: str, displacement: Displacement) -> None:
        remaining = self._open.get(request_id)
        if remaining is None:
            return
        remaining.remove(displacement)
        if not remaining:
            del self._open[request_id]
            self._lengths.pop(request_id, None)

    # -- the level ------------------------------------------------------------------------
    def _measure_ranking(self) -> None:
        if len(self._finished) < 2:
            self.rank_correlation = None
            return
        pairs = np.asarray(self._finished)
        self.rank_correlation = spearman(pairs[:, 0], pairs[:, 1])

    def _decide_level(self) -> bool:
        if not self.enabled or self._since_change < self.min_samples:
            return False
        correlation = self.rank_correlation if self.samples >= self.min_samples else None
        weak_ranking = correlation is not None and correlation < self.min_rank_correlation
        ranking_recovered = correlation is not None and correlation >= self.min_rank_correlation + self.hysteresis
        regret = self.regret_ratio if self.resolved_preemptions >= self.min_samples else None
        regretful = regret is not None and regret > self.max_regret_ratio
        level = self.level
        if level is GuardLevel.TRUSTING and (weak_ranking or regretful):
            level = GuardLevel.NO_PREEMPTION
        elif level is GuardLevel.NO_PREEMPTION and weak_ranking:
            level = GuardLevel.ARRIVAL_ORDER
        elif level is GuardLevel.NO_PREEMPTION and ranking_recovered:
            level = GuardLevel.TRUSTING
            self._regrets.clear()  # measured before preemption stopped: a fresh window decides
        elif level is GuardLevel.ARRIVAL_ORDER and ranking_recovered:
            level = GuardLevel.NO_PREEMPTION
        if level is self.level:
            return False
        self.level, self._since_change = level, 0
        return True
