"""Scheduling policies: which waiting requests to admit, which running ones to preempt.

One interface (:class:`Policy`) for four policies:

- ``fcfs``: arrival order, no preemption for ordering (stock vLLM).
- ``sjf``: waiting requests by predicted length, no preemption once started.
- ``trail``: shortest predicted remaining first, with *limited* preemption: a running
  request can be displaced only while ``generated < c × initial prediction``.
- ``trail-oracle``: ``trail`` ranked by true remaining lengths (benchmarks only).

Decisions are pure functions of their inputs: same input, same decision.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter

# The settings are the shared contract's: one definition for the policy, the admin API, the engine
# and the operator (re-exported for the core's users).
from trail_contract.settings import MAX_C as MAX_C
from trail_contract.settings import PolicyName as PolicyName
from trail_contract.settings import SchedulerSettings as SchedulerSettings


def is_preemptible(generated_tokens: int, initial_prediction: float, c: float) -> bool:
    """Young enough to be displaced: ``generated < c × initial prediction``."""
    return generated_tokens < c * initial_prediction


# The two views are not frozen, though nothing may change one once built: the engine builds
# one per running request per decode step, and a frozen dataclass costs three times as much
# to construct (2.7 against 0.7 us; 256 of them were most of a step's scheduling time).
@dataclass(slots=True)
class WaitingRequest:
    request_id: str
    arrival_time: float
    predicted_remaining: float  # prompt estimate, or the refined one if it was preempted
    blocks_needed: int = 0
    true_remaining: float | None = None  # oracle only
    remaining_spread: float = 0.0  # standard deviation of predicted_remaining (0: unknown)


@dataclass(slots=True)
class RunningRequest:
    # The engine adapter builds one per running request per step, positionally: a new
    # field goes last, or there too.
    request_id: str
    arrival_time: float
    generated_tokens: int
    initial_prediction: float  # r: the first predicted length, fixed for the request
    predicted_remaining: float
    blocks_held: int = 0
    preemptions: int = 0
    true_remaining: float | None = None  # oracle only
    remaining_spread: float = 0.0  # standard deviation of predicted_remaining (0: unknown)
    recompute_tokens: int = 0  # what resuming it after a preemption would prefill again


@dataclass(frozen=True)
class Room:
    free_slots: int
    free_blocks: int


@dataclass(frozen=True)
class Decision:
    admit: tuple[str, ...] = ()
    preempt: tuple[str, ...] = ()
    # Every request waiting once this decision is carried out, best first: the ones
    # already waiting and the ones it preempts. The order vLLM should admit them in;
    # a victim left out would keep its stale priority and could be resumed at once.
    waiting_order: tuple[str, ...] = ()
    # All running requests (after preemption), the most expendable first: who goes
    # when memory runs out. Protected (non-preemptible) requests come last.
    victim_order: tuple[str, ...] = ()
    protected: frozenset[str] = field(default_factory=frozenset)
    promoted: int = 0  # how many of ``admit`` the starvation guard put in front
    # (displacer, victim) for each of ``preempt``: the admitted request it made room for.
    displacements: tuple[tuple[str, str], ...] = ()


class Policy:
    """Ranks requests and decides admissions and preemptions for one step."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings

    @property
    def name(self) -> PolicyName:
        return self.settings.policy

    # -- ranking ---------------------------------------------------------------
    def rank_function(self):
        """``request -> rank`` for this policy (smaller runs first)."""
        name = self.settings.policy
        if name is PolicyName.FCFS:
            return attrgetter("arrival_time")
        if name is PolicyName.TRAIL_ORACLE:
            return lambda r: r.predicted_remaining if r.true_remaining is None else r.true_remaining
        return attrgetter("predicted_remaining")

    def rank(self, request: WaitingRequest | RunningRequest) -> float:
        return self.rank_function()(request)

    def _starvation_cutoff(self, now: float) -> float:
        """Requests that arrived before this have waited longer than the bound."""
        bound = self.settings.max_wait_seconds
        return -math.inf if bound is None else now - bound

    def starved(self, request: WaitingRequest | RunningRequest, now: float) -> bool:
        return request.arrival_time < self._starvation_cutoff(now)

    def preemptible_predicate(self, now: float):
        """``request -> bool``: may this running request be displaced by a better-ranked one?

        Never under fcfs/sjf, never once starved (it waited long enough), never past
        the preemption cap; otherwise exactly while ``generated < c × initial prediction``.
        """
        s = self.settings
        if not s.policy.preempts_for_order:
            return lambda request: False
        cutoff, cap, c = self._starvation_cutoff(now), s.max_preemptions, s.c
        oracle = s.policy is PolicyName.TRAIL_ORACLE

        def initial(r: RunningRequest) -> float:
            # The oracle's first prediction is the true length itself.
            if oracle and r.true_remaining is not None:
                return r.generated_tokens + r.true_remaining
            return r.initial_prediction

        return lambda r: (
            r.arrival_time >= cutoff
            and (cap is None or r.preemptions < cap)
            and is_preemptible(r.generated_tokens, initial(r), c)
        )

    def preemptible(self, request: RunningRequest, now: float) -> bool:
        return self.preemptible_predicate(now)(request)

    def displacement_pays(self, victim: RunningRequest, newcomer: WaitingRequest) -> bool:
        """With ``preemption_by_benefit``: whether running the newcomer first gains more than
        the victim's recompute costs. The gain is the difference of expected remaining lengths
        less one standard deviation of that difference (so it must pay even when both estimates
        are off by a typical error); the cost, the victim's tokens to prefill again at
        ``recompute_token_cost`` decode steps each. Always true with the switch off."""
        s = self.settings
        if not s.preemption_by_benefit:
            return True
        rank = self.rank_function()
        gain = rank(victim) - rank(newcomer) - math.hypot(victim.remaining_spread, newcomer.remaining_spread)
        return gain > s.recompute_token_cost * victim.recompute_tokens

    # -- the decision ----------------------------------------------------------
    def decide(
        self,
        waiting: Sequence[WaitingRequest],
        running: Sequence[RunningRequest],
        room: Room,
        now: float,
    ) -> Decision:
        # Runs every engine step over every request: keep per-request work minimal.
        rank = self.rank_function()
        cutoff = self._starvation_cutoff(now)

        def waiting_key(r: WaitingRequest) -> tuple:
            # Starved requests jump the queue, oldest first; then by rank.
            if r.arrival_time < cutoff:
                return (0, r.arrival_time, 0.0, r.request_id)
            return (1, rank(r), r.arrival_time, r.request_id)

        ordered_waiting = sorted(waiting, key=waiting_key)
        # Exactly the reverse of the waiting order's keys, so the last victim taken ranks best.
        by_worst_rank = sorted(running, key=lambda r: (rank(r), r.arrival_time, r.request_id), reverse=True)
        preemptible = self.preemptible_predicate(now)
        protected = frozenset(r.request_id for r in running if not preemptible(r))
        # Worst rank first; victims are always taken from the front.
        candidates = [r for r in by_worst_rank if r.request_id not in protected]
        next_candidate = 0

        slots, blocks = room.free_slots, room.free_blocks
        admit: list[str] = []
        victims: list[RunningRequest] = []
        displacements: list[tuple[str, str]] = []
        margin = self.settings.preemption_margin
        best_victim_key = None  # victims wait again: nobody ranked behind one may take the room it left
        promoted = 0
        for request in ordered_waiting:
            if best_victim_key is not None and best_victim_key < waiting_key(request):
                break
            needed = request.blocks_needed
            starved = request.arrival_time < cutoff
            if not (slots >= 1 and blocks >= needed):  # make room by displacing worse-ranked young requests
                threshold = (-math.inf if starved else rank(request)) + margin
                taken = next_candidate
                # Worst-ranked first, as long as displacing each is worth it (a starved request
                # is let in whatever it costs).
                while (
                    taken < len(candidates)
                    and rank(candidates[taken]) > threshold
                    and (starved or self.displacement_pays(candidates[taken], request))
                ):
                    slots, blocks = slots + 1, blocks + candidates[taken].blocks_held
                    taken += 1
                    if slots >= 1 and blocks >= needed:
                        break
                if not (slots >= 1 and blocks >= needed):
                    break  # strict order: nothing behind the head may overtake it
                if taken > next_candidate:
                    victims += candidates[next_candidate:taken]
                    displacements += [(request.request_id, r.request_id) for r in candidates[next_candidate:taken]]
                    best_victim_key = waiting_key(candidates[taken - 1])
                next_candidate = taken
            promoted += starved
            admit.append(request.request_id)
            slots, blocks = slots - 1, blocks - needed

        preempted = {r.request_id for r in victims}
        if victims:  # they wait again, in rank order, behind everyone admitted (see above)
            ordered_keys = list(map(waiting_key, ordered_waiting))
            for victim in victims:
                key = waiting_key(victim)
                at = bisect.bisect(ordered_keys, key)
                ordered_keys.insert(at, key)
                ordered_waiting.insert(at, victim)
        survivors = [r.request_id for r in by_worst_rank if r.request_id not in preempted]
        victim_order = [rid for rid in survivors if rid not in protected]
        victim_order += [rid for rid in survivors if rid in protected]
        return Decision(
            admit=tuple(admit),
            preempt=tuple(r.request_id for r in victims),
            waiting_order=tuple(r.request_id for r in ordered_waiting),
            victim_order=tuple(victim_order),
            protected=protected,
            promoted=promoted,
            displacements=tuple(displacements),
        )
