"""The decision kept between steps (RankedQueues) is the policy's decision rebuilt every step.

A hypothesis state machine drives random arrivals, admissions, estimate changes, preemptions,
finishes, settings changes, rooms and clocks through both, and compares every decision.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_core_policy import scheduling_inputs

from trail_scheduler.core import Policy, Room, RunningRequest, SchedulerSettings, WaitingRequest
from trail_scheduler.core.ranked import RankedQueues

# Small sets, so that ties in rank and arrival are common.
ranks = st.sampled_from([5.0, 50.0, 50.0, 300.0]) | st.floats(0.0, 600.0)
arrivals = st.sampled_from([0.0, 1.0, 2.0]) | st.floats(0.0, 60.0)
settings_drawn = st.builds(
    SchedulerSettings,
    policy=st.sampled_from(["fcfs", "sjf", "trail", "trail-oracle"]),
    c=st.sampled_from([0.0, 0.5, 0.8, 1.0, 5.0]),
    max_wait_seconds=st.none() | st.floats(1.0, 50.0),
    preemption_margin=st.sampled_from([0.0, 10.0, 100.0]),
    max_preemptions=st.none() | st.integers(1, 3),
    preemption_by_benefit=st.booleans(),
    recompute_token_cost=st.sampled_from([0.0, 0.01, 1.0]),
)
spreads = st.sampled_from([0.0, 5.0, 50.0])
# Mostly full, so that decisions preempt.
rooms = st.builds(Room, free_slots=st.sampled_from([0, 0, 0, 1, 2]), free_blocks=st.integers(0, 12))


class SameDecisions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.settings = SchedulerSettings(max_wait_seconds=None)
        self.queues = RankedQueues(self.settings)
        self.waiting: dict[str, WaitingRequest] = {}
        self.running: dict[str, RunningRequest] = {}
        self.next_id = 0
        self.decisions = 0

    @rule(rank=ranks, arrival=arrivals, blocks=st.integers(0, 6), true=st.none() | ranks, spread=spreads)
    def arrive(self, rank, arrival, blocks, true, spread) -> None:
        view = WaitingRequest(f"q{self.next_id}", arrival, rank, blocks, true, remaining_spread=spread)
        self.next_id += 1
        self.waiting[view.request_id] = view
        self.queues.set_waiting(view)

    @precondition(lambda self: self.waiting)
    @rule(data=st.data(), blocks=st.integers(0, 6))
    def start(self, data, blocks) -> None:
        """vLLM admits a waiting request (whether or not the decision said so)."""
        view = self.waiting.pop(data.draw(st.sampled_from(sorted(self.waiting))))
        started = RunningRequest(
            view.request_id,
            view.arrival_time,
            generated_tokens=0,
            initial_prediction=view.predicted_remaining,
            predicted_remaining=view.predicted_remaining,
            blocks_held=blocks,
            true_remaining=view.true_remaining,
            remaining_spread=view.remaining_spread,
            recompute_tokens=view.blocks_needed * 16,
        )
        self.running[started.request_id] = started
        self.queues.set_running(started)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), tokens=st.integers(0, 40), rank=st.none() | ranks, blocks=st.integers(0, 2), spread=spreads)
    def generate(self, data, tokens, rank, blocks, spread) -> None:
        """Tokens, a probe reading (a new estimate) or neither, and the blocks they fill."""
        view = self.running[data.draw(st.sampled_from(sorted(self.running)))]
        moved = replace(
            view,
            generated_tokens=view.generated_tokens + tokens,
            predicted_remaining=max(0.0, view.predicted_remaining - tokens) if rank is None else rank,
            blocks_held=view.blocks_held + blocks,
            remaining_spread=view.remaining_spread if rank is None else spread,
            recompute_tokens=view.recompute_tokens + tokens,
        )
        self.running[moved.request_id] = moved
        self.queues.set_running(moved)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def preempt(self, data) -> None:
        """Preempted (by the decision or by memory pressure): it waits again, one preemption more."""
        view = self.running.pop(data.draw(st.sampled_from(sorted(self.running))))
        waiting = WaitingRequest(
            view.request_id,
            view.arrival_time,
            view.predicted_remaining,
            view.blocks_held,
            view.true_remaining,
            remaining_spread=view.remaining_spread,
        )
        self.waiting[waiting.request_id] = waiting
        self.queues.set_waiting(waiting)

    @precondition(lambda self: self.running or self.waiting)
    @rule(data=st.data())
    def finish(self, data) -> None:
        """Finished (running) or aborted (waiting)."""
        rid = data.draw(st.sampled_from(sorted(self.running) + sorted(self.waiting)))
        self.running.pop(rid, None)
        self.waiting.pop(rid, None)
        self.queues.remove(rid)

    @rule(new=settings_drawn)
    def retune(self, new) -> None:
        self.settings = new
        self.queues.follow(new)

    @rule(room=rooms, now=st.floats(0.0, 120.0), carry_out=st.booleans())
    def decide(self, room, now, carry_out) -> None:
        expected = Policy(self.settings).decide(list(self.waiting.values()), list(self.running.values()), room, now)
        assert self.queues.decide(room, now) == expected
        assert self.queues.decide(room, now) == expected  # asked again, unchanged
        self.decisions += 1
        if carry_out:  # the victims wait again (the admitted ones start when vLLM schedules them)
            for rid in expected.preempt:
                view = self.running.pop(rid)
                waiting = WaitingRequest(rid, view.arrival_time, view.predicted_remaining, 0, view.true_remaining)
                self.waiting[rid] = waiting
                self.queues.set_waiting(waiting)

    @invariant()
    def holds_what_it_was_told(self) -> None:
        assert self.queues.waiting == self.waiting
        assert self.queues.running == self.running


SameDecisions.TestCase.settings = settings(max_examples=300, stateful_step_count=60)
test_the_kept_decision_is_the_rebuilt_one = SameDecisions.TestCase


@settings(max_examples=1000)
@given(scheduling_inputs(), st.randoms(use_true_random=False), st.lists(st.tuples(rooms, st.floats(0.0, 150.0))))
def test_any_step_from_any_order_of_arrival_is_the_rebuilt_decision(inputs, rng, later_steps):
    """The policy tests' steps (built to reach every branch of the decision), told one view at a
    time in any order, then decided again for other rooms and clocks with nothing changed."""
    knobs, waits, runs, room, now = inputs
    views = [*waits, *runs]
    rng.shuffle(views)
    queues = RankedQueues(knobs)
    for view in views:
        (queues.set_waiting if isinstance(view, WaitingRequest) else queues.set_running)(view)
    for step_room, step_now in [(room, now), *later_steps, (room, now)]:
        assert queues.decide(step_room, step_now) == Policy(knobs).decide(waits, runs, step_room, step_now)


def test_a_moved_estimate_reorders_and_an_unchanged_step_returns_the_same_decision() -> None:
    queues = RankedQueues(SchedulerSettings(max_wait_seconds=None))
    for rid, rank in [("a", 30.0), ("b", 20.0), ("c", 10.0)]:
        queues.set_waiting(WaitingRequest(rid, 0.0, rank))
    room = Room(free_slots=0, free_blocks=0)
    first = queues.decide(room, now=1.0)
    assert first.waiting_order == ("c", "b", "a")
    assert queues.decide(room, now=2.0) is first
    queues.set_waiting(WaitingRequest("a", 0.0, 5.0))
    assert queues.decide(room, now=2.0).waiting_order == ("a", "c", "b")


def test_the_clock_alone_can_starve_a_request_into_the_front() -> None:
    queues = RankedQueues(SchedulerSettings(max_wait_seconds=10.0))
    queues.set_waiting(WaitingRequest("long", 0.0, 500.0))
    queues.set_waiting(WaitingRequest("short", 5.0, 5.0))
    room = Room(free_slots=1, free_blocks=10)
    assert queues.decide(room, now=9.0).admit == ("short",)
    assert queues.decide(room, now=11.0).admit == ("long",)


def test_a_starved_request_displaces_even_a_better_ranked_young_one() -> None:
    queues = RankedQueues(SchedulerSettings(max_wait_seconds=10.0, c=1.0, max_preemptions=None))
    young = RunningRequest("young", 125.0, generated_tokens=0, initial_prediction=50.0, predicted_remaining=5.0)
    queues.set_running(young)
    queues.set_waiting(WaitingRequest("old", 100.0, 500.0))
    decision = queues.decide(Room(free_slots=0, free_blocks=10), now=130.0)
    assert (decision.admit, decision.preempt, decision.promoted) == (("old",), ("young",), 1)
