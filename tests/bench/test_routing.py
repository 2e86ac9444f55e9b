"""The routing comparison's rules and the router's accounting (no engine: the rules are pure,
and round robin and fewest-in-flight read no pod)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trail_scheduler.bench.routing import RULES, Replica, Router, fewest_in_flight, least_drain, round_robin
from trail_scheduler.bench.servers import Server
from trail_scheduler.bench.workload import BenchRequest

IDLE = Replica(in_flight=0, backlog_tokens=0.0, drain_seconds=0.0)


def test_round_robin_takes_replicas_in_turn():
    assert [round_robin([IDLE] * 3, turn) for turn in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_fewest_in_flight_avoids_the_busy_replica_and_shares_ties_in_turn():
    assert fewest_in_flight([Replica(3), Replica(1), Replica(2)], turn=0) == 1
    assert [fewest_in_flight([Replica(0), Replica(0)], turn) for turn in range(4)] == [0, 1, 0, 1]


def test_least_drain_ranks_by_predicted_seconds_once_every_replica_has_a_rate():
    # Fewer requests in flight, but more predicted work: the drain time decides.
    long_work = Replica(in_flight=1, backlog_tokens=900.0, drain_seconds=18.0)
    short_work = Replica(in_flight=3, backlog_tokens=120.0, drain_seconds=2.4)
    assert least_drain([long_work, short_work], turn=0) == 1
    # A replica without a measured rate yet: the backlog in tokens decides, for all of them.
    unmeasured = Replica(in_flight=0, backlog_tokens=50.0, drain_seconds=None)
    assert least_drain([long_work, unmeasured], turn=0) == 1
    assert least_drain([Replica(0, 60.0, None), Replica(0, 50.0, 0.1)], turn=0) == 1
    # Equal predicted work: fewer in flight, then in turn.
    assert least_drain([Replica(2, 10.0, 1.0), Replica(1, 10.0, 1.0)], turn=0) == 1
    assert [least_drain([IDLE, IDLE], turn) for turn in range(3)] == [0, 1, 0]


@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 1e4), st.none() | st.floats(0, 1e3)), min_size=1, max_size=5))
def test_every_rule_names_a_replica_and_least_drain_one_with_the_least_work(readings):
    replicas = [Replica(*reading) for reading in readings]
    for rule in RULES.values():
        assert 0 <= rule(replicas, 7) < len(replicas)
    chosen = replicas[least_drain(replicas, 7)]
    if all(r.drain_seconds is not None for r in replicas):
        assert chosen.drain_seconds == min(r.drain_seconds for r in replicas)
    else:
        assert chosen.backlog_tokens == min(r.backlog_tokens for r in replicas)


def test_the_router_counts_what_it_sent_until_it_ends():
    servers = [Server("http://127.0.0.1:1"), Server("http://127.0.0.1:2")]
    request = BenchRequest("p", "prompt", 8, 0.0)

    async def scenario() -> list[str]:
        async with Router("fewest-in-flight", servers) as router:
            first = await router.choose(request)
            second = await router.choose(request)  # the other: the first is still in flight
            router.finished(first)
            third = await router.choose(request)  # the first again: the second still runs
            return [first, second, third]

    first, second, third = asyncio.run(scenario())
    assert first != second and third == first


def test_an_unknown_rule_is_refused():
    with pytest.raises(KeyError):
        Router("random", [Server("http://127.0.0.1:1")])
