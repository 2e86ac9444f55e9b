"""The policy's decision, kept between steps: :meth:`Policy.decide` without the re-sort.

:class:`RankedQueues` holds the waiting and running requests' views in rank order and is
told what changed (a view set anew, a request gone, new settings); a view whose rank key
did not move costs no re-ranking. Its :meth:`~RankedQueues.decide` returns exactly
:meth:`Policy.decide`'s decision for the same views, room and clock (a property test holds
them equal), touching only the head of the waiting queue and the tail of the running one,
and the same decision object again while nothing it depends on changed.

Time enters in one way: the starvation bound moves the cutoff, so the requests older than
it are found by bisection in arrival order rather than by looking at every request.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from trail_scheduler.core.policy import Decision, Policy, Room, RunningRequest, SchedulerSettings, WaitingRequest

# (rank, arrival, request id): the policy's order among requests that are not starved.
RankKey = tuple[float, float, str]


def _remove(keys: list, key) -> None:
    del keys[bisect.bisect_left(keys, key)]


class RankedQueues:
    """Waiting and running requests in rank order, updated per request, decided per step."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._waiting: dict[str, WaitingRequest] = {}
        self._running: dict[str, RunningRequest] = {}
        self.follow(settings)

    # -- what changed -------------------------------------------------------------------
    def follow(self, settings: SchedulerSettings) -> None:
        """New settings: every key and every protection is computed again."""
        self.policy = Policy(settings)
        self._rank = self.policy.rank_function()
        # Preemptible but for the clock (a clock at -inf starves nobody); the clock's part is
        # the arrival cutoff, applied per decision.
        self._may_be_displaced = self.policy.preemptible_predicate(now=float("-inf"))
        self._waiting_keys: dict[str, RankKey] = {}
        self._waiting_ranked: list[RankKey] = []
        self._waiting_arrivals: list[tuple[float, str]] = []
        self._running_keys: dict[str, RankKey] = {}
        self._running_ranked: list[RankKey] = []
        self._running_arrivals: list[tuple[float, str]] = []
        self._always_protected: set[str] = set()
        waiting, running = list(self._waiting.values()), list(self._running.values())
        self._waiting.clear()
        self._running.clear()
        for view in waiting:
            self.set_waiting(view)
        for view in running:
            self.set_running(view)
        self._waiting_changed()
        self._running_changed()

    def set_waiting(self, view: WaitingRequest) -> None:
        """A request waits (arrived, preempted, or its view changed)."""
        rid = view.request_id
        if rid in self._running:
            self._drop_running(rid)
        old = self._waiting.get(rid)
        self._waiting[rid] = view
        key = (self._rank(view), view.arrival_time, rid)
        if old is None:
            bisect.insort(self._waiting_arrivals, (view.arrival_time, rid))
        elif (
            key == self._waiting_keys[rid]
            and old.blocks_needed == view.blocks_needed
            and old.remaining_spread == view.remaining_spread
        ):
            return
        else:
            _remove(self._waiting_ranked, self._waiting_keys[rid])
        self._waiting_keys[rid] = key
        bisect.insort(self._waiting_ranked, key)
        self._waiting_changed()

    def set_running(self, view: RunningRequest) -> None:
        """A request runs (admitted, or its view changed: a token, a reading, blocks)."""
        rid = view.request_id
        if rid in self._waiting:
            self._drop_waiting(rid)
        old = self._running.get(rid)
        self._running[rid] = view
        key = (self._rank(view), view.arrival_time, rid)
        protected = not self._may_be_displaced(view)
        if old is None:
            bisect.insort(self._running_arrivals, (view.arrival_time, rid))
        elif (
            key == self._running_keys[rid]
            and old.blocks_held == view.blocks_held
            and protected == (rid in self._always_protected)
            and old.remaining_spread == view.remaining_spread
            and old.recompute_tokens == view.recompute_tokens
        ):
            return
        else:
            _remove(self._running_ranked, self._running_keys[rid])
        self._running_keys[rid] = key
        bisect.insort(self._running_ranked, key)
        if protected:
            self._always_protected.add(rid)
        else:
            self._always_protected.discard(rid)
        self._running_changed()

    def remove(self, request_id: str) -> None:
        """A request finished or was aborted."""
        if request_id in self._waiting:
            self._drop_waiting(request_id)
        elif request_id in self._running:
            self._drop_running(request_id)

    def _drop_waiting(self, rid: str) -> None:
        key = self._waiting_keys.pop(rid)
        _remove(self._waiting_ranked, key)
        _remove(self._waiting_arrivals, (key[1], rid))
        del self._waiting[rid]
        self._waiting_changed()

    def _drop_running(self, rid: str) -> None:
        key = self._running_keys.pop(rid)
        _remove(self._running_ranked, key)
        _remove(self._running_arrivals, (key[1], rid))
        self._always_protected.discard(rid)
        del self._running[rid]
        self._running_changed()

    # What a change invalidates: the last decision, and what was kept of the side that changed.
    def _waiting_changed(self) -> None:
        self._last: tuple | None = None  # (what the last decision depended on, the decision)
        self._waiting_ids: tuple[str, ...] | None = None

    def _running_changed(self) -> None:
        self._last = None
        self._protection: tuple | None = None  # (starved running requests, protected ids)
        self._victim_order: tuple | None = None  # (protected ids, the victim order without victims)

    @property
    def waiting(self) -> dict[str, WaitingRequest]:
        return self._waiting

    @property
    def running(self) -> dict[str, RunningRequest]:
        return self._running

    # -- the decision -------------------------------------------------------------------
    def decide(self, room: Room, now: float) -> Decision:
        """:meth:`Policy.decide` on the views held, for this room and clock."""
        cutoff = self.policy._starvation_cutoff(now)
        starved_waiting = bisect.bisect_left(self._waiting_arrivals, (cutoff,))
        starved_running = bisect.bisect_left(self._running_arrivals, (cutoff,))
        depends_on = (room, starved_waiting, starved_running)
        if self._last is not None and self._last[0] == depends_on:
            return self._last[1]
        decision = self._decide(room, starved_waiting, starved_running)
        self._last = (depends_on, decision)
        return decision

    def _protected(self, starved_running: int) -> frozenset[str]:
        if self._protection is None or self._protection[0] != starved_running:
            starved = (rid for _, rid in self._running_arrivals[:starved_running])
            self._protection = (starved_running, frozenset(self._always_protected.union(starved)))
        return self._protection[1]

    def _ordered_waiting(self, starved: frozenset[str]) -> Iterator[tuple]:
        """Waiting requests in the policy's order, with its keys: starved by arrival, then by rank."""
        for arrival, rid in self._waiting_arrivals[: len(starved)]:
            yield (0, arrival, 0.0, rid)
        for key in self._waiting_ranked:
            if key[2] not in starved:
                yield (1, *key)

    def _decide(self, room: Room, starved_waiting: int, starved_running: int) -> Decision:
        starved = frozenset(rid for _, rid in self._waiting_arrivals[:starved_waiting])
        protected = self._protected(starved_running)
        running = self._running
        worst_first = reversed(self._running_ranked)
        candidates: list[RankKey] = []  # the unprotected, worst rank first, read as far as needed

        def candidate(index: int) -> RankKey | None:
            while len(candidates) <= index:
                key = next(worst_first, None)
                if key is None:
                    return None
                if key[2] not in protected:
                    candidates.append(key)
            return candidates[index]

        slots, blocks = room.free_slots, room.free_blocks
        margin = self.policy.settings.preemption_margin
        pays = self.policy.displacement_pays
        admit: list[str] = []
        victims: list[RankKey] = []
        displacements: list[tuple[str, str]] = []
        next_candidate = 0
        best_victim_key = None
        promoted = 0
        for key in self._ordered_waiting(starved):
            if best_victim_key is not None and best_victim_key < key:
                break
            rid = key[-1]
            needed = self._waiting[rid].blocks_needed
            is_starved = key[0] == 0
            if not (slots >= 1 and blocks >= needed):
                threshold = (float("-inf") if is_starved else key[1]) + margin
                taken = next_candidate
                newcomer = self._waiting[rid]
                while (
                    (victim := candidate(taken)) is not None
                    and victim[0] > threshold
                    and (is_starved or pays(running[victim[2]], newcomer))
                ):
                    slots, blocks = slots + 1, blocks + running[victim[2]].blocks_held
                    taken += 1
                    if slots >= 1 and blocks >= needed:
                        break
                if not (slots >= 1 and blocks >= needed):
                    break
                if taken > next_candidate:
                    victims += candidates[next_candidate:taken]
                    displacements += [(rid, victim[2]) for victim in candidates[next_candidate:taken]]
                    best_victim_key = (1, *candidates[taken - 1])
                next_candidate = taken
            promoted += is_starved
            admit.append(rid)
            slots, blocks = slots - 1, blocks - needed
        return Decision(
            admit=tuple(admit),
            preempt=tuple(key[2] for key in victims),
            waiting_order=self._waiting_order(starved, victims),
            victim_order=self._survivors(protected, victims),
            protected=protected,
            promoted=promoted,
            displacements=tuple(displacements),
        )

    def _waiting_order(self, starved: frozenset[str], victims: list[RankKey]) -> tuple[str, ...]:
        if not starved and not victims:
            if self._waiting_ids is None:
                self._waiting_ids = tuple(key[2] for key in self._waiting_ranked)
            return self._waiting_ids
        ranked = [key for key in self._waiting_ranked if key[2] not in starved]
        for victim in victims:  # they wait again, in rank order, behind everyone admitted
            bisect.insort(ranked, victim)
        order = [rid for _, rid in self._waiting_arrivals[: len(starved)]]
        return tuple(order + [key[2] for key in ranked])

    def _survivors(self, protected: frozenset[str], victims: list[RankKey]) -> tuple[str, ...]:
        """Running requests after the preemptions, most expendable first, the protected last."""
        if not victims and self._victim_order is not None and self._victim_order[0] is protected:
            return self._victim_order[1]
        preempted = {key[2] for key in victims}
        worst_first = [key[2] for key in reversed(self._running_ranked) if key[2] not in preempted]
        expendable = [rid for rid in worst_first if rid not in protected]
        order = tuple(expendable + [rid for rid in worst_first if rid in protected])
        if not victims:
            self._victim_order = (protected, order)
        return order
