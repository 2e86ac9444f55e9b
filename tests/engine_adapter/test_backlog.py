"""The predicted backlog a pod exports for routing and autoscaling: the rate it is
divided by (pure), and the scheduler's backlog as requests arrive and finish (in-process,
both scheduler classes, no model)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import REGISTRY

from tests.engine_adapter.harness import make_request
from trail_scheduler.server import metrics
from trail_scheduler.vllm.backlog import OutputRate, drain_seconds


def test_the_rate_counts_busy_steps_only_and_outlives_an_idle_spell():
    rate = OutputRate(window=30.0, idle_gap=1.0)
    assert rate.per_second() is None
    rate.step(100.0, 4)  # the first step: nothing to measure its duration against
    assert rate.per_second() is None
    for i in range(1, 11):
        rate.step(100.0 + 0.1 * i, 4)  # 4 tokens every 0.1 s
    assert rate.per_second() == pytest.approx(40.0)
    rate.step(160.0, 4)  # after a minute idle: the gap is not decode time; the window has emptied
    assert rate.per_second() == pytest.approx(40.0)
    rate.step(160.5, 30)  # busy again, faster: only the recent steps count
    assert rate.per_second() == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("backlog", "rate", "seconds"), [(0.0, None, 0.0), (100.0, None, None), (100.0, 0.0, None), (100.0, 40.0, 2.5)]
)
def test_drain_seconds(backlog, rate, seconds):
    assert drain_seconds(backlog, rate) == seconds


def test_the_backlog_is_every_requests_predicted_remaining_and_moves_with_the_work(make_engine):
    engine = make_engine(policy="sjf", max_num_seqs=2)
    scheduler = engine.scheduler
    control = scheduler.trail_control
    assert (control.stats().predicted_backlog_tokens, control.stats().predicted_drain_seconds) == (0, 0)
    engine.add(
        make_request("a", max_tokens=40, estimate=40.0),
        make_request("b", max_tokens=20, estimate=20.0),
        make_request("c", max_tokens=30, estimate=30.0),  # waits: two slots
    )
    arrived = control.stats()
    assert arrived.predicted_backlog_tokens == 90.0
    assert arrived.predicted_drain_seconds is None  # nothing measured yet
    engine.run(6)
    busy = control.stats()
    per_request = sum(r.predicted_remaining for r in (*busy.running, *busy.waiting))
    assert busy.num_waiting == 1 and busy.predicted_backlog_tokens == per_request < 90.0
    assert busy.predicted_drain_seconds == pytest.approx(
        busy.predicted_backlog_tokens / scheduler.trail_output_rate.per_second()
    )
    drained = control.drain_metrics()  # what the API server's poller records
    assert drained.predicted_backlog_tokens == busy.predicted_backlog_tokens
    metrics.record(drained)
    assert REGISTRY.get_sample_value("trail_predicted_backlog_tokens") == busy.predicted_backlog_tokens
    assert REGISTRY.get_sample_value("trail_predicted_drain_seconds") == pytest.approx(busy.predicted_drain_seconds)
    engine.run_to_completion()
    done = control.stats()
    assert (done.predicted_backlog_tokens, done.predicted_drain_seconds) == (0, 0)
    assert scheduler.trail_output_rate.per_second() > 0  # kept for the next burst


def test_an_unmeasured_drain_time_is_exported_as_nan(make_engine):
    engine = make_engine(policy="fcfs")
    engine.add(make_request("a", estimate=10.0))
    metrics.record(engine.scheduler.trail_control.drain_metrics())
    assert REGISTRY.get_sample_value("trail_predicted_backlog_tokens") == 10.0
    assert math.isnan(REGISTRY.get_sample_value("trail_predicted_drain_seconds"))
