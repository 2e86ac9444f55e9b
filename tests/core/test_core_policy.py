"""The scheduling policies: invariants (hypothesis), scenarios, starvation, settings."""

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trail_scheduler.core import (
    Decision,
    Policy,
    PolicyName,
    Room,
    RunningRequest,
    SchedulerSettings,
    WaitingRequest,
    is_preemptible,
)

ALL_POLICIES = [p.value for p in PolicyName]
SRPT_POLICIES = ["sjf", "trail", "trail-oracle"]


def waiting(rid: str, pred: float = 100.0, arrival: float = 0.0, blocks: int = 0, true=None) -> WaitingRequest:
    return WaitingRequest(rid, arrival, pred, blocks_needed=blocks, true_remaining=true)


def running(
    rid: str, generated: int, initial: float, pred=None, arrival: float = 0.0, blocks: int = 0, preemptions: int = 0
) -> RunningRequest:
    """A running request; by default its prediction has counted down exactly as it generated."""
    pred = initial - generated if pred is None else pred
    return RunningRequest(rid, arrival, generated, initial, pred, blocks_held=blocks, preemptions=preemptions)


def decide(policy: str, waits, runs, slots: int = 0, blocks: int = 10**6, now: float = 0.0, **knobs) -> Decision:
    return Policy(SchedulerSettings(policy=policy, **knobs)).decide(
        waits, runs, Room(free_slots=slots, free_blocks=blocks), now
    )


# -- hypothesis strategies ----------------------------------------------------------

lengths = st.floats(0.0, 2000.0)
times = st.floats(0.0, 100.0)


@st.composite
def scheduling_inputs(draw, policies=ALL_POLICIES):
    """A random step: settings, waiting and running sets (with ties), room and clock."""
    knobs = SchedulerSettings(
        policy=draw(st.sampled_from(policies)),
        c=draw(st.sampled_from([0.0, 0.5, 0.8, 1.0, 5.0])),
        max_wait_seconds=draw(st.none() | st.floats(1.0, 50.0)),
        preemption_margin=draw(st.sampled_from([0.0, 10.0, 100.0])),
        max_preemptions=draw(st.none() | st.integers(0, 3)),
        preemption_by_benefit=draw(st.booleans()),
        recompute_token_cost=draw(st.sampled_from([0.0, 0.01, 1.0])),
    )
    # Draw ranks and arrivals from small sets so ties are common.
    ranks = st.sampled_from([5.0, 50.0, 50.0, 300.0]) | lengths
    arrivals = st.sampled_from([0.0, 1.0]) | times
    spreads = st.sampled_from([0.0, 5.0, 50.0])
    waits = [
        WaitingRequest(
            f"w{i}",
            draw(arrivals),
            draw(ranks),
            draw(st.integers(0, 8)),
            draw(st.none() | lengths),
            remaining_spread=draw(spreads),
        )
        for i in range(draw(st.integers(0, 8)))
    ]
    runs = []
    for i in range(draw(st.integers(0, 8))):
        initial = draw(ranks)
        runs.append(
            RunningRequest(
                f"r{i}",
                draw(arrivals),
                draw(st.integers(0, 2500)),
                initial,
                draw(ranks),
                blocks_held=draw(st.integers(0, 8)),
                preemptions=draw(st.integers(0, 4)),
                true_remaining=draw(st.none() | lengths),
                remaining_spread=draw(spreads),
                recompute_tokens=draw(st.integers(0, 500)),
            )
        )
    room = Room(draw(st.integers(0, 4)), draw(st.integers(0, 20)))
    return knobs, waits, runs, room, draw(st.floats(0.0, 150.0))


def run_decide(inputs) -> tuple[Policy, Decision]:
    knobs, waits, runs, room, now = inputs
    policy = Policy(knobs)
    return policy, policy.decide(waits, runs, room, now)


# -- invariants -------------------------------------------------------------------


@given(scheduling_inputs())
def test_decisions_are_feasible_and_never_preempt_protected_requests(inputs):
    """Every decision fits the room, admits in queue order and only preempts preemptible requests."""
    knobs, waits, runs, room, now = inputs
    policy, d = run_decide(inputs)
    by_id = {r.request_id: r for r in [*waits, *runs]}
    victims = [by_id[i] for i in d.preempt]
    admitted = [by_id[i] for i in d.admit]

    # Preempted requests wait again: they are ranked with the rest, behind everyone admitted.
    assert sorted(d.waiting_order) == sorted([*(r.request_id for r in waits), *d.preempt])
    assert list(d.admit) == list(d.waiting_order[: len(d.admit)])  # strict queue order
    assert set(d.preempt) <= {r.request_id for r in runs} and len(set(d.preempt)) == len(d.preempt)
    assert not set(d.preempt) & d.protected
    for victim in victims:
        assert knobs.policy.preempts_for_order
        initial = victim.initial_prediction
        if knobs.policy is PolicyName.TRAIL_ORACLE and victim.true_remaining is not None:
            initial = victim.generated_tokens + victim.true_remaining  # the oracle's r is the truth
        assert is_preemptible(victim.generated_tokens, initial, knobs.c)
        assert knobs.max_preemptions is None or victim.preemptions < knobs.max_preemptions
        margin = knobs.preemption_margin
        assert any(
            policy.starved(w, now)
            or (policy.rank(victim) > policy.rank(w) + margin and policy.displacement_pays(victim, w))
            for w in admitted
        )
    assert d.promoted == sum(policy.starved(w, now) for w in admitted)
    assert len(admitted) <= room.free_slots + len(victims)
    assert sum(w.blocks_needed for w in admitted) <= room.free_blocks + sum(v.blocks_held for v in victims)
    # Under memory pressure the engine evicts from the front of victim_order: protected last.
    survivors = list(d.victim_order)
    assert sorted(survivors) == sorted(r.request_id for r in runs if r.request_id not in d.preempt)
    flags = [i in d.protected for i in survivors]
    assert flags == sorted(flags)


@given(scheduling_inputs(), st.randoms(use_true_random=False))
def test_same_input_in_any_order_gives_the_same_decision(inputs, rng):
    """Ties break deterministically: shuffling the waiting and running lists changes nothing."""
    knobs, waits, runs, room, now = inputs
    shuffled_waits, shuffled_runs = list(waits), list(runs)
    rng.shuffle(shuffled_waits)
    rng.shuffle(shuffled_runs)
    assert run_decide((knobs, shuffled_waits, shuffled_runs, room, now))[1] == run_decide(inputs)[1]


@given(scheduling_inputs(policies=["fcfs", "sjf"]))
def test_fcfs_and_sjf_never_preempt(inputs):
    """Only trail and trail-oracle displace running requests for ordering."""
    _, d = run_decide(inputs)
    assert d.preempt == ()
    assert d.protected == {r.request_id for r in inputs[2]}


@given(scheduling_inputs(policies=["trail", "trail-oracle"]))
def test_c_zero_never_preempts_a_started_request(inputs):
    """c = 0 makes every running request non-preemptible."""
    knobs, waits, runs, room, now = inputs
    _, d = run_decide((knobs.model_copy(update={"c": 0.0}), waits, runs, room, now))
    assert d.preempt == ()
    assert d.protected == {r.request_id for r in runs}


@given(st.integers(0, 3000), st.floats(0.0, 2000.0), st.floats(0.0, 3.0))
def test_preemptible_exactly_while_generated_below_c_times_initial(generated, initial, c):
    """With no other knob in play, trail protects a request iff generated >= c × initial prediction."""
    request = running("r", generated, initial, pred=5000.0)
    d = decide("trail", [], [request], c=c)
    assert ("r" not in d.protected) == (generated < c * initial)


@pytest.mark.parametrize(("generated", "expected"), [(0, True), (79, True), (80, False), (81, False)])
def test_preemptibility_boundary(generated, expected):
    """c = 0.8, r = 100: preemptible up to 79 generated tokens; from 80 on, protected."""
    assert is_preemptible(generated, 100.0, 0.8) is expected
    assert ("r" not in decide("trail", [], [running("r", generated, 100.0)], c=0.8).protected) is expected


def test_preemptibility_uses_the_initial_prediction_not_the_current_one():
    """A request whose refined estimate grew is still judged against its first prediction."""
    grown = running("r", generated=50, initial=40.0, pred=900.0)
    d = decide("trail", [waiting("short", pred=5.0)], [grown], c=1.0)
    assert d.preempt == () and d.admit == ()


# -- ties -----------------------------------------------------------------------


def test_ties_break_by_arrival_then_id():
    """Equal ranks: earlier arrival first, then request id; for victims the youngest goes first."""
    d = decide(
        "trail",
        [waiting("b", 10.0, arrival=1.0), waiting("c", 10.0, arrival=0.0), waiting("a", 10.0, arrival=1.0)],
        [running("old", 0, 200.0, arrival=0.0), running("new", 0, 200.0, arrival=5.0)],
        slots=3,
    )
    assert d.waiting_order == d.admit == ("c", "a", "b")
    assert d.victim_order == ("new", "old")


# -- scenarios --------------------------------------------------------------------


def head_of_line_queue() -> list[WaitingRequest]:
    """One long request at the head of the queue, five short ones behind it."""
    long = waiting("long", pred=800.0, arrival=0.0, true=800.0)
    shorts = [waiting(f"s{i}", pred=20.0 + i, arrival=1.0 + i, true=20.0 + i) for i in range(5)]
    return [long, *shorts]


@pytest.mark.parametrize("policy", SRPT_POLICIES)
def test_short_requests_behind_a_long_one_go_first(policy):
    """Length-aware policies admit the short requests first and leave the long one waiting."""
    d = decide(policy, head_of_line_queue(), [], slots=3)
    assert d.admit == ("s0", "s1", "s2")
    assert d.waiting_order[-1] == "long"


def test_fcfs_admits_the_long_head_first():
    """FCFS keeps arrival order: the long request blocks a slot."""
    d = decide("fcfs", head_of_line_queue(), [], slots=3)
    assert d.admit == ("long", "s0", "s1")


def test_oracle_ranks_by_true_length():
    """trail-oracle ignores a wrong prediction when it knows the true remaining length."""
    misjudged = waiting("misjudged", pred=900.0, true=5.0)
    d = decide("trail-oracle", [waiting("other", pred=50.0, true=50.0), misjudged], [], slots=1)
    assert d.admit == ("misjudged",)
    assert decide("trail", [waiting("other", pred=50.0), misjudged], [], slots=1).admit == ("other",)


def full_batch(generated: int) -> list[RunningRequest]:
    """A full batch holding one long request (initial prediction 500) that has generated so much."""
    return [running("long", generated, 500.0, pred=490.0), running("mid", 0, 200.0, pred=100.0)]


def test_short_arrival_preempts_a_young_long_request():
    """Full batch: a short newcomer displaces the young long request (10 < 0.8 × 500)."""
    d = decide("trail", [waiting("short", pred=20.0)], full_batch(generated=10), c=0.8)
    assert d.preempt == ("long",) and d.admit == ("short",)


def test_a_victim_waits_behind_its_displacer_and_in_rank_order_with_the_rest():
    """The preempted request queues by its rank: after the newcomer, before anything predicted longer."""
    queue = [waiting("short", pred=20.0), waiting("longer", pred=900.0)]
    d = decide("trail", queue, full_batch(generated=10), c=0.8)
    assert d.preempt == ("long",)
    assert d.waiting_order == ("short", "long", "longer")


def test_short_arrival_does_not_preempt_an_old_long_request():
    """Past c × r (400 ≥ 0.8 × 500) the long request keeps its slot; the mid one is the victim."""
    d = decide("trail", [waiting("short", pred=20.0)], full_batch(generated=400), c=0.8)
    assert d.preempt == ("mid",) and "long" in d.protected


@pytest.mark.parametrize("policy", ["fcfs", "sjf"])
def test_fcfs_and_sjf_leave_a_full_batch_alone(policy):
    """Without preemption for ordering a newcomer waits for a free slot."""
    d = decide(policy, [waiting("short", pred=20.0)], full_batch(generated=10))
    assert d.preempt == () and d.admit == ()


@pytest.mark.parametrize(("margin", "preempts"), [(0.0, True), (39.0, True), (41.0, False)])
def test_preemption_margin(margin, preempts):
    """The newcomer must be shorter than the victim by more than the margin (victim 150, newcomer 110)."""
    d = decide("trail", [waiting("new", pred=110.0)], [running("old", 0, 1000.0, pred=150.0)], preemption_margin=margin)
    assert (d.preempt == ("old",)) is preempts


@pytest.mark.parametrize(("suffered", "cap", "preempts"), [(2, 2, False), (2, 3, True), (0, 0, False), (9, None, True)])
def test_max_preemptions_caps_how_often_one_request_is_displaced(suffered, cap, preempts):
    """A request that has been preempted `max_preemptions` times is protected from then on."""
    victim = running("victim", 0, 1000.0, preemptions=suffered)
    d = decide("trail", [waiting("new", pred=10.0)], [victim], max_preemptions=cap)
    assert (d.preempt == ("victim",)) is preempts


def test_preemption_frees_enough_blocks_worst_rank_first_and_no_more():
    """A newcomer needing KV blocks displaces the worst-ranked preemptible requests until it fits."""
    runs = [
        running("worst", 0, 1000.0, pred=900.0, blocks=4),
        running("second", 0, 1000.0, pred=800.0, blocks=4),
        running("third", 0, 1000.0, pred=700.0, blocks=4),
        running("protected", 900, 1000.0, pred=950.0, blocks=50),
    ]
    d = decide("trail", [waiting("new", pred=10.0, blocks=7)], runs, slots=1, blocks=0)
    assert d.preempt == ("worst", "second") and d.admit == ("new",)
    assert d.victim_order == ("third", "protected")


def test_a_head_that_cannot_fit_blocks_the_queue():
    """Strict order: when the best-ranked request cannot be placed, nothing behind it overtakes."""
    queue = [waiting("big", pred=5.0, blocks=50), waiting("small", pred=10.0, blocks=1)]
    d = decide("sjf", queue, [], slots=2, blocks=10)
    assert d.admit == ()


def test_a_starved_request_jumps_the_queue_and_a_starved_runner_is_protected():
    """Past max_wait_seconds a waiting request goes first; a running one can no longer be displaced."""
    queue = [waiting("fresh", pred=5.0, arrival=95.0), waiting("starved", pred=900.0, arrival=0.0)]
    d = decide("trail", queue, [running("veteran", 0, 1000.0, arrival=10.0)], slots=1, now=100.0, max_wait_seconds=30.0)
    assert d.waiting_order == ("starved", "fresh")
    assert d.admit == ("starved",) and d.preempt == ()
    assert "veteran" in d.protected


# -- starvation: a small discrete-time simulator --------------------------------------


def simulate(knobs: SchedulerSettings, *, slots: int, short_len: int, steps: int) -> tuple[float | None, int]:
    """One second per step, one token per running request per step, perfect predictions.

    A long request arrives at t=0 behind a full batch of short ones, and every step
    `slots` more short requests arrive: enough work to keep a length-aware policy busy
    with shorts forever. Preempted requests resume where they stopped (generated tokens,
    initial prediction and preemption count kept). Returns when the long one was first
    admitted (None if never) and how many requests completed.
    """
    policy = Policy(knobs)
    queue = [WaitingRequest("long", 0.0, 1000.0, true_remaining=1000.0)]
    batch = {f"init{i}": running(f"init{i}", 0, float(short_len), arrival=0.0) for i in range(slots)}
    suspended: dict[str, RunningRequest] = {}
    first_admitted: dict[str, float] = {}
    completed = counter = 0
    for t in range(1, steps + 1):
        for _ in range(slots):
            queue.append(WaitingRequest(f"s{counter:06d}", float(t), float(short_len), true_remaining=float(short_len)))
            counter += 1
        d = policy.decide(queue, list(batch.values()), Room(slots - len(batch), 0), float(t))
        for rid in d.preempt:
            r = batch.pop(rid)
            suspended[rid] = replace(r, preemptions=r.preemptions + 1)
            queue.append(WaitingRequest(rid, r.arrival_time, r.predicted_remaining, true_remaining=r.true_remaining))
        admitted = set(d.admit)
        for w in (w for w in queue if w.request_id in admitted):
            first_admitted.setdefault(w.request_id, float(t))
            fresh = RunningRequest(
                w.request_id,
                w.arrival_time,
                0,
                w.predicted_remaining,
                w.predicted_remaining,
                true_remaining=w.true_remaining,
            )
            batch[w.request_id] = suspended.pop(w.request_id, fresh)
        queue = [w for w in queue if w.request_id not in admitted]
        for rid, r in list(batch.items()):  # one decode step
            left = r.predicted_remaining - 1
            if left <= 0:
                del batch[rid]
                completed += 1
            else:
                batch[rid] = replace(
                    r, generated_tokens=r.generated_tokens + 1, predicted_remaining=left, true_remaining=left
                )
    return first_admitted.get("long"), completed


starvation_cases = st.tuples(
    st.sampled_from(SRPT_POLICIES), st.integers(1, 3), st.integers(2, 6), st.sampled_from([0.0, 0.8, 2.0])
)


@given(starvation_cases, st.floats(3.0, 40.0))
def test_starvation_guard_bounds_the_wait(case, bound):
    """With max_wait_seconds the long request is admitted within the bound plus one short service time."""
    policy, slots, short_len, c = case
    knobs = SchedulerSettings(policy=policy, c=c, max_wait_seconds=bound)
    admitted_at, _ = simulate(knobs, slots=slots, short_len=short_len, steps=int(bound) + short_len + 5)
    assert admitted_at is not None
    assert admitted_at <= bound + short_len + 1


@settings(max_examples=25)
@given(starvation_cases)
def test_without_the_guard_the_long_request_starves(case):
    """The same stream without a bound never admits the long request, while shorts keep completing."""
    policy, slots, short_len, c = case
    knobs = SchedulerSettings(policy=policy, c=c)
    admitted_at, completed = simulate(knobs, slots=slots, short_len=short_len, steps=300)
    assert admitted_at is None
    assert completed >= 290 * slots // short_len


def test_fcfs_serves_the_long_request_at_the_first_free_slot():
    """Control for the simulator: arrival order admits the long request as soon as a slot frees."""
    admitted_at, _ = simulate(SchedulerSettings(policy="fcfs"), slots=2, short_len=4, steps=20)
    assert admitted_at == 5.0  # the initial batch decodes in steps 1-4


# -- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"c": -0.1}, "c must be a finite number between 0 and 1000"),
        ({"c": 1e4}, "c must be a finite number between 0 and 1000"),
        ({"c": math.inf}, "c must be a finite number"),
        ({"c": math.nan}, "c must be a finite number"),
        ({"c": "0.8"}, "c must be a finite number"),
        ({"c": True}, "c must be a finite number"),
        ({"policy": "lifo"}, "unknown policy 'lifo'; expected one of: fcfs, sjf, trail, trail-oracle"),
        ({"predict_every": 0}, "predict_every must be an integer from 1 to"),
        ({"predict_every": 2.5}, "predict_every must be an integer from 1 to"),
        ({"max_wait_seconds": 0}, "max_wait_seconds must be a positive number"),
        ({"max_wait_seconds": math.inf}, "max_wait_seconds must be a positive number"),
        ({"max_wait_seconds": math.nan}, "max_wait_seconds must be a positive number"),
        ({"preemption_margin": -1.0}, "preemption_margin must be from 0 to"),
        ({"preemption_margin": math.nan}, "preemption_margin must be from 0 to"),
        ({"preemption_margin": "5"}, "preemption_margin must be from 0 to"),
        ({"max_preemptions": -1}, "max_preemptions must be an integer from 0 to"),
        ({"max_preemptions": 1.5}, "max_preemptions must be an integer from 0 to"),
    ],
)
def test_settings_reject_bad_values(knobs, message):
    """Each bad knob fails at construction with a message naming it."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SchedulerSettings(**knobs)


def test_settings_accept_the_documented_defaults_and_strings():
    """The CRD passes the policy as a string; defaults are the paper's c = 0.8, predict every token."""
    s = SchedulerSettings(policy="trail-oracle")
    assert s.policy is PolicyName.TRAIL_ORACLE
    assert (SchedulerSettings().c, SchedulerSettings().predict_every) == (0.8, 1)


def test_the_oracle_judges_youth_by_the_true_length():
    """TRAIL+ protects a request once it has generated c × its *true* length."""
    from trail_scheduler.core.policy import Policy, PolicyName, RunningRequest, SchedulerSettings

    policy = Policy(SchedulerSettings(policy=PolicyName.TRAIL_ORACLE, c=0.5))
    # The (wrong) first prediction says 1000 tokens; the truth is 100, 60 generated.
    old = RunningRequest(
        "a", 0.0, generated_tokens=60, initial_prediction=1000, predicted_remaining=940, true_remaining=40
    )
    young = RunningRequest(
        "b", 0.0, generated_tokens=40, initial_prediction=10, predicted_remaining=0, true_remaining=60
    )
    assert not policy.preemptible(old, now=1.0)
    assert policy.preemptible(young, now=1.0)


def test_the_decision_counts_the_admissions_the_starvation_guard_made():
    """Only the starved admission counts as promoted; the fresh one got in on rank."""
    queue = [waiting("starved", pred=900.0, arrival=0.0), waiting("fresh", pred=5.0, arrival=95.0)]
    d = decide("trail", queue, [], slots=2, now=100.0, max_wait_seconds=10.0)
    assert d.admit == ("starved", "fresh") and d.promoted == 1
    assert decide("trail", queue, [], slots=2, now=100.0).promoted == 0


def test_a_request_ranked_between_two_tied_victims_waits_behind_the_better_one():
    """Two victims tie on rank and arrival: the one with the smaller id queues first, so the
    waiting request whose id sorts between them does not take the room they left."""
    queue = [waiting("head", pred=1.0, blocks=8), waiting("ab", pred=50.0)]
    batch = [running("a", 0, 500.0, pred=50.0, blocks=4), running("b", 0, 500.0, pred=50.0, blocks=4)]
    d = decide("trail", queue, batch, slots=0, blocks=0, c=0.8)
    assert d.preempt == ("b", "a") and d.admit == ("head",)
    assert d.waiting_order == ("head", "a", "ab", "b")


@given(scheduling_inputs(policies=["trail", "trail-oracle"]))
def test_each_victim_is_paired_with_the_admitted_request_it_made_room_for(inputs):
    _, d = run_decide(inputs)
    assert [victim for _, victim in d.displacements] == list(d.preempt)
    assert {displacer for displacer, _ in d.displacements} <= set(d.admit)


@pytest.mark.parametrize(
    ("recompute_tokens", "spread", "preempts"),
    [(0, 0.0, True), (100, 0.0, True), (300, 0.0, False), (0, 150.0, False), (0, 100.0, True)],
)
def test_preemption_by_benefit_weighs_the_gain_against_recompute_and_uncertainty(recompute_tokens, spread, preempts):
    """The young request has 300 left, the newcomer 100: a gain of 200 tokens, less one standard
    deviation of the difference (both spreads ``spread``: spread x 1.41), against 1 step per
    recomputed token."""
    young = replace(running("young", 0, 300.0), remaining_spread=spread, recompute_tokens=recompute_tokens)
    newcomer = replace(waiting("new", 100.0), remaining_spread=spread)
    knobs = {"c": 1.0, "preemption_by_benefit": True, "recompute_token_cost": 1.0}
    d = decide("trail", [newcomer], [young], **knobs)
    assert d.preempt == (("young",) if preempts else ())
    assert decide("trail", [newcomer], [young], c=1.0).preempt == ("young",)  # the switch off: rank alone


def test_a_starved_request_displaces_whatever_the_recompute_costs():
    young = replace(running("young", 0, 300.0, arrival=50.0), recompute_tokens=10_000)
    old = waiting("old", 100.0, arrival=0.0)
    d = decide("trail", [old], [young], now=60.0, c=1.0, max_wait_seconds=30.0, preemption_by_benefit=True)
    assert d.preempt == ("young",)
