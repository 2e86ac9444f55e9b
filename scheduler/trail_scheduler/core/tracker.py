"""Per-request length predictions over a request's life: prompt estimate, first
embedding estimate, refined belief, and the errors measured when it ends.

Pure bookkeeping on top of :mod:`refine`; the vLLM scheduler feeds it token counts
and probe outputs, and reads one point estimate per request per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trail_contract.settings import RefinementPrior, SchedulerSettings
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.refine import expected_remaining, normalise, refine, remaining_spread, update


@dataclass
class RequestPrediction:
    prompt_estimate: float
    oracle_length: float | None = None
    # The prompt predictor's distribution over its own bins, when it sent one.
    prompt_distribution: tuple[LengthBins, np.ndarray] | None = None
    first_estimate: float | None = None  # expected remaining when the belief starts (see _start)
    belief: np.ndarray | None = None
    generated: int = 0
    tokens_since_evidence: int = 0
    belief_estimate: float | None = None  # E[q] at the last probe reading
    belief_spread: float | None = None  # its standard deviation
    prompt_spread: float = 0.0  # the prompt predictor's distribution's (0: it sent none)
    # Whether the belief, rather than the prompt estimate, is what the request is ranked on
    # (see PredictionTracker.probe_ranks_after).
    belief_ranks: bool = False
    # Predicted remaining length before each generated token (for the refined error).
    history: list[float] = field(default_factory=list)

    @property
    def predicted_remaining(self) -> float:
        """Between probe readings the estimate counts down one per generated token."""
        if self.belief_estimate is None or not self.belief_ranks:
            return max(0.0, self.prompt_estimate - self.generated)
        return max(0.0, self.belief_estimate - self.tokens_since_evidence)

    @property
    def remaining_spread(self) -> float:
        """The standard deviation of what ranks the request (0 where no distribution is known)."""
        if self.belief_spread is None or not self.belief_ranks:
            return self.prompt_spread
        return self.belief_spread

    @property
    def initial_prediction(self) -> float:
        """``r`` of the preemption rule: the first predicted length, fixed once known."""
        if self.first_estimate is not None:
            return self.first_estimate
        return self.prompt_estimate

    @property
    def true_remaining(self) -> float | None:
        return None if self.oracle_length is None else max(0.0, self.oracle_length - self.generated)


@dataclass(frozen=True)
class PredictionErrors:
    """Absolute errors in tokens, measured when a request finishes (None: no such estimate)."""

    prompt: float | None
    first: float | None
    refined: float | None


class PredictionTracker:
    """The scheduler's beliefs about every request's length.

    ``probe_ranks_after`` (tokens) is when the probe's belief starts to rank a request: until
    it has generated that many, the request is ranked on the prompt estimate it was admitted
    on, counted down, as are the waiting requests it competes with. At the hand-over, a
    request whose belief comes out above the queue's prompt estimates is displaced, so the
    setting chooses when that happens: a few tokens in (every request gets its first tokens
    early) or after the probe has read more of the answer. The belief is refined all along;
    0 (or 1: the prompt's reading comes with the first token) ranks on it from the first
    reading.
    """

    def __init__(self, bins: LengthBins, settings: SchedulerSettings = SchedulerSettings()) -> None:
        self.bins = bins
        self.requests: dict[str, RequestPrediction] = {}
        self.follow(settings)

    def follow(self, settings: SchedulerSettings) -> None:
        """Take the settings it reads: the prior for beliefs started from now on, the evidence
        weight (the exponent on every probe reading, refine.update) and when the probe ranks
        for readings from now on."""
        self.prior: RefinementPrior = settings.refinement_prior
        self.evidence_weight = settings.evidence_weight
        self.probe_ranks_after = settings.probe_ranks_after

    @property
    def unknown_estimate(self) -> float:
        """What a request without a prompt estimate counts as: the median bin's length."""
        return self.bins.representatives[(self.bins.count - 1) // 2]

    def set_bins(self, bins: LengthBins) -> None:
        """A probe with other bins: beliefs restart from its next reading, estimates stay."""
        if bins == self.bins:
            return
        self.bins = bins
        for state in self.requests.values():
            if state.belief is not None:
                state.belief = None
                state.belief_estimate = state.predicted_remaining
                state.tokens_since_evidence = 0

    def add(
        self,
        request_id: str,
        prompt_estimate: float | None = None,
        oracle_length: float | None = None,
        prompt_distribution: tuple[LengthBins, np.ndarray] | None = None,
    ) -> None:
        estimate = self.unknown_estimate if prompt_estimate is None else float(prompt_estimate)
        spread = (
            0.0 if prompt_distribution is None else remaining_spread(prompt_distribution[1], prompt_distribution[0])
        )
        self.requests[request_id] = RequestPrediction(
            prompt_estimate=estimate,
            oracle_length=oracle_length,
            prompt_distribution=prompt_distribution,
            prompt_spread=spread,
        )

    def _start(self, state: RequestPrediction, reading: np.ndarray, prefill: bool) -> np.ndarray:
        """A request's first belief, from its first probe reading and the prior in force.

        With a prompt prior the prompt predictor's distribution is the starting point: the
        probe's reading of the prompt is then folded in (``both``) or left out (``prompt``),
        while readings of generated tokens always count. Without a distribution from the
        prompt predictor, every prior starts from the probe's reading alone.
        """
        uniform = np.full(self.bins.count, 1.0 / self.bins.count)
        if self.prior is RefinementPrior.PROBE or state.prompt_distribution is None:
            return update(uniform, reading, self.evidence_weight)
        source_bins, probabilities = state.prompt_distribution
        prior = normalise(source_bins.rebin(probabilities, self.bins))
        if prefill and self.prior is RefinementPrior.PROMPT:
            return prior
        return update(prior, reading, self.evidence_weight)

    def _rank_on_belief_if_due(self, state: RequestPrediction) -> None:
        """After a reading: from ``probe_ranks_after`` generated tokens on, the belief ranks."""
        if state.generated >= self.probe_ranks_after:
            state.belief_ranks = True

    def get(self, request_id: str) -> RequestPrediction | None:
        return self.requests.get(request_id)

    def advance(self, request_id: str, new_tokens: int) -> None:
        """Record ``new_tokens`` generated tokens (before this step's probe reading)."""
        state = self.requests.get(request_id)
        if state is None or new_tokens <= 0:
            return
        for _ in range(new_tokens):
            state.history.append(state.predicted_remaining)
            state.generated += 1
            state.tokens_since_evidence += 1

    def observe(self, request_ids: list[str], evidence: np.ndarray, from_prefill: list[bool]) -> None:
        """Fold a step's probe outputs (rows of ``evidence``) into the beliefs.

        A request's first reading starts its belief (:meth:`_start`: ``q⁰ = p⁰`` under the
        ``probe`` prior); a request that already has
        one (resumed after preemption, whose recompute re-reads its prompt) keeps it.
        Decode readings refine after shifting by the tokens generated since the last.
        """
        if evidence.shape[-1] != self.bins.count:
            raise ValueError(f"probe gave {evidence.shape[-1]} bins, tracker has {self.bins.count}")
        rows, priors, shifts = [], [], []
        for row, (request_id, prefill) in enumerate(zip(request_ids, from_prefill)):
            state = self.requests.get(request_id)
            if state is None:
                continue
            if state.belief is None:
                state.belief = self._start(state, evidence[row], prefill)
                state.belief_estimate = float(expected_remaining(state.belief, self.bins))
                state.belief_spread = float(remaining_spread(state.belief, self.bins))
                state.tokens_since_evidence = 0
                self._rank_on_belief_if_due(state)
                if state.first_estimate is None:
                    state.first_estimate = state.belief_estimate + state.generated
                continue
            if prefill:
                continue
            rows.append(row)
            priors.append(state)
            shifts.append(state.tokens_since_evidence)
        if not rows:
            return
        # Requests usually share one shift (every k tokens); group to batch the update.
        for tokens in sorted(set(shifts)):
            group = [i for i, s in enumerate(shifts) if s == tokens]
            beliefs = np.stack([priors[i].belief for i in group])
            posterior = refine(beliefs, evidence[[rows[i] for i in group]], self.bins, tokens, self.evidence_weight)
            estimates = expected_remaining(posterior, self.bins)
            spreads = remaining_spread(posterior, self.bins)
            for j, i in enumerate(group):
                state = priors[i]
                state.belief = posterior[j]
                state.belief_estimate = float(estimates[j])
                state.belief_spread = float(spreads[j])
                state.tokens_since_evidence = 0
                self._rank_on_belief_if_due(state)

    def finish(self, request_id: str, true_length: int) -> PredictionErrors | None:
        """Forget a request; the absolute errors of its estimates against its true length."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        first = None if state.first_estimate is None else abs(state.first_estimate - true_length)
        refined = None
        if state.history:
            truth = true_length - np.arange(len(state.history))
            refined = float(np.mean(np.abs(np.asarray(state.history) - truth)))
        return PredictionErrors(prompt=abs(state.prompt_estimate - true_length), first=first, refined=refined)
