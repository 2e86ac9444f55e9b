"""The prediction guard: whether the length predictions are worth acting on, measured on
every request that has generated tokens, and what the scheduler falls back to when they
are not.

Its measures count a request still in flight as a censored observation: one that has
generated more tokens than a finished request is known to be the longer of the two. So
evidence arrives with the first finishes of a burst, not after the policy has ranked it.

- **rank correlations**, one per prediction the scheduler acts on: Somers' D (Harrell's
  concordance rescaled to −1..1: 1 orders every comparable pair right, 0 is chance, −1
  orders every one wrong) between a prediction and the length, over the pairs of requests
  whose order is known: two of the last ``window`` finished with different lengths, or one
  of them and a request in flight that has already generated more. The *first prediction*
  (``r`` of the preemption rule, the start of the belief a running request is ranked on)
  decides preemption; the *prompt estimate* (what ranks the waiting queue) decides the order.
- **regret ratio**: of the last ``window`` preemptions whose outcome is known, the share
  where the victim had less left at the preemption than its displacer: the preemption made
  things worse. Known as soon as one of the two finishes and the other has generated more
  than the finished one had left.

Three levels: ``trusting`` (the policy as set), ``no-preemption`` (as ``c = 0``: still
ranks, never displaces a started request) while the first predictions rank weakly or
preemptions are regretted, ``arrival-order`` (first come, first served) while the prompt
estimates rank weakly. No level changes before ``min_samples`` finished requests, nor within
``min_samples`` finished requests of the last change, and trusting again needs a rank
correlation above its threshold by ``hysteresis``. Preempting is what regret measures, so
while it is off regret cannot recover: once the first predictions rank well again,
preemption is tried again and the regret window starts empty. With the guard switched off
it still measures; only the level stays ``trusting``.

Pure and deterministic: the adapter reports finishes (with the requests in flight), aborts
and preemptions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from trail_contract.admin_api import GuardLevel
from trail_contract.settings import PolicyName, SchedulerSettings
from trail_scheduler.core.tracker import RequestPrediction


def somers_d(
    predicted: np.ndarray, lengths: np.ndarray, censored_predicted: np.ndarray, censored_generated: np.ndarray
) -> tuple[float | None, int]:
    """Somers' D of predictions against lengths, and how many pairs it rests on.

    ``predicted``/``lengths``: finished requests. ``censored_*``: requests in flight, each
    known to be longer than every finished one with fewer tokens than it has generated.
    A pair whose predictions tie counts half right. None where no pair's order is known.
    """
    lengths = np.asarray(lengths, float)
    known = lengths[:, None] < np.concatenate([lengths, censored_generated])[None, :]
    pairs = int(np.count_nonzero(known))
    if pairs == 0:
        return None, 0
    shorter, longer = np.asarray(predicted, float)[:, None], np.concatenate([predicted, censored_predicted])[None, :]
    right = np.count_nonzero(known & (longer > shorter))
    wrong = np.count_nonzero(known & (longer < shorter))
    return float(right - wrong) / pairs, pairs


def kendall_standard_error(samples: int) -> float:
    """The standard error of a rank correlation (Kendall's) over ``samples`` requests when
    the predictions rank nothing: how far from chance a reading can be by luck alone."""
    return float(np.sqrt(2 * (2 * samples + 5) / (9 * samples * (samples - 1)))) if samples > 1 else 1.0


@dataclass(frozen=True)
class Displacement:
    """A preemption: who took whose place, and how many tokens each had generated then."""

    displacer: str
    victim: str
    displacer_generated: int
    victim_generated: int


class PredictionGuard:
    """Measures the predictions and sets the level of fallback."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self.level = GuardLevel.TRUSTING
        # (first prediction, prompt estimate, length) of the last finished requests
        self._finished: deque[tuple[float, float, float]] = deque()
        self._regrets: deque[bool] = deque()
        self._open: dict[str, list[Displacement]] = {}  # by both ends, until the outcome is known
        self._lengths: dict[str, int] = {}  # finished requests still in an open displacement
        self._since_change = 0  # finished requests since the level last changed
        self.rank_correlation: float | None = None  # of the first predictions
        self.prompt_rank_correlation: float | None = None  # of the prompt estimates
        self.pairs = 0  # pairs of requests in a known order, the rank correlations rest on
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

    def finished(
        self, request_id: str, prediction: RequestPrediction, length: int, in_flight: Mapping[str, RequestPrediction]
    ) -> bool:
        """A request finished with ``length`` generated tokens; ``in_flight``: the requests
        the scheduler tracks (this one, and those that generated nothing, are skipped).
        True if the level changed."""
        self._finished.append((prediction.initial_prediction, prediction.prompt_estimate, float(length)))
        others = [p for other, p in in_flight.items() if other != request_id and p.generated > 0]
        self._measure_ranking(np.array([(p.initial_prediction, p.prompt_estimate, p.generated) for p in others]))
        if request_id in self._open:
            self._lengths[request_id] = length
        self._resolve({other: in_flight[other].generated for other in self._open if other in in_flight})
        self._since_change += 1
        return self._decide_level()

    def aborted(self, request_id: str) -> None:
        """Its length says nothing: its displacements are dropped unresolved."""
        for displacement in self._open.pop(request_id, []):
            other = displacement.victim if displacement.displacer == request_id else displacement.displacer
            self._forget(other, displacement)
        self._lengths.pop(request_id, None)

    def _resolve(self, generated: dict[str, int]) -> None:
        """Settle every open displacement whose outcome is now known."""
        for request_id in list(self._lengths):
            for displacement in list(self._open.get(request_id, [])):
                regretted = self._regretted(displacement, generated)
                if regretted is not None:
                    self._regrets.append(regretted)
                    self._forget(displacement.displacer, displacement)
                    self._forget(displacement.victim, displacement)

    def _regretted(self, displacement: Displacement, generated: dict[str, int]) -> bool | None:
        """Whether the victim had less left than its displacer; None while that is unknown:
        one of them finished, and the other has not yet generated more than it had left."""
        victim_end, displacer_end = self._lengths.get(displacement.victim), self._lengths.get(displacement.displacer)
        victim_since = generated.get(displacement.victim, 0) - displacement.victim_generated
        displacer_since = generated.get(displacement.displacer, 0) - displacement.displacer_generated
        if victim_end is not None:
            victim_left = victim_end - displacement.victim_generated
            if displacer_end is not None:
                return victim_left < displacer_end - displacement.displacer_generated
            return True if displacer_since > victim_left else None
        displacer_left = displacer_end - displacement.displacer_generated
        return False if victim_since >= displacer_left else None

    def _forget(self, request_id: str, displacement: Displacement) -> None:
        remaining = self._open.get(request_id)
        if remaining is None:
            return
        remaining.remove(displacement)
        if not remaining:
            del self._open[request_id]
            self._lengths.pop(request_id, None)

    # -- the level ------------------------------------------------------------------------
    def _measure_ranking(self, censored: np.ndarray) -> None:
        """The rank correlations over the finished window and ``censored`` (rows: first
        prediction, prompt estimate, tokens generated so far)."""
        finished = np.asarray(self._finished)
        censored = censored.reshape(-1, 3)
        self.rank_correlation, self.pairs = somers_d(finished[:, 0], finished[:, 2], censored[:, 0], censored[:, 2])
        self.prompt_rank_correlation, _ = somers_d(finished[:, 1], finished[:, 2], censored[:, 1], censored[:, 2])

    def _decide_level(self) -> bool:
        if not self.enabled or self._since_change < self.min_samples or self.samples < self.min_samples:
            return False
        ordering = self._judge(self.prompt_rank_correlation, GuardLevel.ARRIVAL_ORDER)
        preempting = self._judge(self.rank_correlation, GuardLevel.NO_PREEMPTION)
        resolved = self.resolved_preemptions
        if self.level is GuardLevel.TRUSTING and resolved >= self.min_samples:
            # Regretted more often than the threshold by more than a standard error of the share.
            if self.regret_ratio - 0.5 / np.sqrt(resolved) > self.max_regret_ratio:
                preempting = False
        if ordering is False:
            level = GuardLevel.ARRIVAL_ORDER
        elif preempting is False:
            level = GuardLevel.NO_PREEMPTION
        else:
            level = GuardLevel.TRUSTING
        if level is self.level:
            return False
        if self.level is GuardLevel.NO_PREEMPTION and level is GuardLevel.TRUSTING:
            self._regrets.clear()  # measured before preemption stopped: a fresh window decides
        self.level, self._since_change = level, 0
        return True

    def _judge(self, correlation: float | None, fallback: GuardLevel) -> bool | None:
        """Whether a prediction is trusted at the level above ``fallback``. Trusted, it is
        distrusted once its rank correlation is below the threshold by more than a standard
        error (a few finishes of a burst are a narrow, noisy sample); distrusted, it is
        trusted again at threshold + hysteresis."""
        if correlation is None:
            return None if self.level.fallback < fallback.fallback else False
        if self.level.fallback >= fallback.fallback:
            return correlation >= self.min_rank_correlation + self.hysteresis
        return correlation + kendall_standard_error(self.samples) >= self.min_rank_correlation
