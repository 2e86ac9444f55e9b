"""TRAIL's vLLM schedulers driven in-process, step by step, on both classes (sync and async).

What the real-engine tests in tests/engine show with timing and vLLM's metrics, shown
here exactly and in milliseconds: the policy's decisions as vLLM carries them out
(admission order, victims, KV-pressure eviction), and the scheduler's side of the probe
(readings folded in, probe updates handed to the workers).
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY
from vllm.v1.request import RequestStatus

from tests.engine_adapter.harness import BINS, BLOCK_SIZE, Engine, make_request, reading, write_probe
from trail_scheduler.server import metrics
from trail_scheduler.vllm.control import ApplyReply


def apply(scheduler, update: dict, probe_bytes: bytes | None = None) -> ApplyReply:
    """A change through the scheduler's utility entry, as vLLM delivers the admin API's."""
    return ApplyReply.model_validate(scheduler("apply", update, probe_bytes))


def admitted(outputs) -> list[str]:
    """Request ids in the order vLLM first scheduled them."""
    return [new.req_id for output in outputs for new in output.scheduled_new_reqs]


# -- the policy's decision, carried out through vLLM's priorities ---------------------


@pytest.mark.parametrize(
    ("policy", "order"),
    [("fcfs", ["long", "short", "mid"]), ("sjf", ["short", "mid", "long"]), ("trail", ["short", "mid", "long"])],
)
def test_scarce_slots_go_to_the_shortest_predicted_first(make_engine, policy, order):
    """One slot, three requests in arrival order long, short, mid (predicted 300, 20, 90)."""
    engine = make_engine(max_num_seqs=1, policy=policy)
    predicted = {"long": 300, "short": 20, "mid": 90}
    engine.add(*(make_request(name, estimate=estimate) for name, estimate in predicted.items()))
    assert admitted(engine.run_to_completion()) == order
    assert engine.scheduler.trail_preemptions_total == 0


@pytest.mark.parametrize(("max_wait_seconds", "order"), [(None, ["s0", "s1", "long"]), (30.0, ["long", "s0", "s1"])])
def test_the_starvation_guard_admits_a_long_waiting_request_first(make_engine, max_wait_seconds, order):
    """A long-predicted request that has waited 100 s and two short ones that just arrived:
    shortest-first serves it last; with a 30 s bound it has waited too long and goes first."""
    engine = make_engine(max_num_seqs=1, policy="trail", c=0.0, max_wait_seconds=max_wait_seconds)
    engine.add(make_request("long", estimate=1000, arrival_time=time.time() - 100))
    engine.add(*(make_request(f"s{i}", estimate=5) for i in range(2)))
    assert admitted(engine.run_to_completion()) == order
    assert engine.scheduler.trail_metrics.decisions["promote"] == (max_wait_seconds is not None)


def _short_ones_arrive(engine: Engine) -> tuple:
    """Two requests fill the 2-slot batch and generate 30 tokens: "old" was predicted 40
    (75% done), "young" 400 (8%). Then two short ones (predicted 4) arrive and get
    scheduled once. Returns (old, young, that step's output)."""
    old = make_request("old", max_tokens=100, estimate=40)
    young = make_request("young", max_tokens=100, estimate=400)
    engine.add(old, young)
    engine.run(31)
    assert old.num_output_tokens >= 29 and young.num_output_tokens >= 29
    engine.add(*(make_request(f"short{i}", max_tokens=4, estimate=4) for i in range(2)))
    return old, young, engine.step()


@pytest.mark.parametrize(
    ("policy", "c", "victims"),
    [
        ("trail", 0.5, {"young"}),  # old is protected: 30 generated >= 0.5 x 40
        ("trail", 100.0, {"old", "young"}),  # both young under a large c
        ("trail", 0.0, set()),  # c = 0 never preempts a started request
        ("sjf", 100.0, set()),  # neither sjf nor fcfs preempts for ordering
        ("fcfs", 100.0, set()),
    ],
)
def test_limited_preemption_displaces_only_young_requests(make_engine, policy, c, victims):
    engine = make_engine(policy=policy, c=c)
    old, young, output = _short_ones_arrive(engine)
    assert set(output.preempted_req_ids) == victims
    assert {r.request_id for r in (old, young) if r.status == RequestStatus.PREEMPTED} == victims
    assert admitted([output]) == ["short0", "short1"][: len(victims)]
    assert engine.scheduler.trail_metrics.preemptions == ({"policy": len(victims)} if victims else {})
    engine.run_to_completion()
    assert {r.request_id for r in (old, young) if r.num_preemptions} == victims


@pytest.mark.parametrize(("cost", "victims"), [(0.0, {"old", "young"}), (1.0, {"young"}), (100.0, set())])
def test_preemption_by_benefit_displaces_only_whom_it_pays_to(make_engine, cost, victims):
    """About 30 tokens in, young has ~370 left and old ~10, the short ones 4; resuming either
    prefills its ~46 prompt and generated tokens again, at ``cost`` steps a token."""
    engine = make_engine(policy="trail", c=100.0, preemption_by_benefit=True, recompute_token_cost=cost)
    _, _, output = _short_ones_arrive(engine)
    assert set(output.preempted_req_ids) == victims
    engine.run_to_completion()


def test_a_displaced_request_is_not_resumed_in_the_same_step(make_engine):
    """vLLM admits waiting requests right after TRAIL preempts: a victim that kept its
    running priority could take a slot back at once, to be displaced again next step."""
    engine = make_engine(policy="trail", c=100.0)
    old, young, output = _short_ones_arrive(engine)
    assert set(output.preempted_req_ids) == {"old", "young"}
    assert set(output.num_scheduled_tokens) == {"short0", "short1"}
    outputs = engine.run_to_completion()
    # Each waits for both short ones, then runs to the end: displaced once.
    for victim in (old, young):
        resumed = next(i for i, o in enumerate(outputs) if victim.request_id in o.num_scheduled_tokens)
        assert {"short0", "short1"} <= set().union(*(o.finished_req_ids for o in outputs[: resumed + 1]))
        assert victim.num_preemptions == 1 and victim.num_output_tokens == 100


@pytest.mark.parametrize("prefix_caching", [False, True], ids=["no-prefix-cache", "prefix-cache"])
def test_preemption_costs_are_counted_how_far_along_and_what_resuming_rebuilt(make_engine, prefix_caching):
    """Both victims rebuild their KV cache when they resume (prompt and generated tokens);
    with the prefix cache on, the full blocks they freed are found there, not recomputed."""
    engine = make_engine(policy="trail", c=100.0, prefix_caching=prefix_caching)
    old, young, output = _short_ones_arrive(engine)
    assert set(output.preempted_req_ids) == {"old", "young"}
    engine.step()  # output still in flight at the preemption arrives (async)
    needed = {r.request_id: r.num_tokens for r in (old, young)}
    assert all(n > 2 * BLOCK_SIZE for n in needed.values())
    engine.run_to_completion()
    drained = engine.scheduler.trail_control.drain_metrics()
    # Cached: the full blocks short of the last token, which vLLM always computes.
    cached = sum((n - 1) // BLOCK_SIZE * BLOCK_SIZE for n in needed.values()) if prefix_caching else 0
    assert drained.resumed_tokens == {"prefix_cache": cached, "recomputed": sum(needed.values()) - cached}
    # How far along each victim was (the prompt is 16 tokens); under async, the token then
    # in flight had not reached vLLM's count yet.
    in_flight = engine.depth - 1
    assert sorted(tokens for _, tokens in drained.preempted_generated) == sorted(
        n - 16 - in_flight for n in needed.values()
    )
    assert {reason for reason, _ in drained.preempted_generated} == {"policy"}
    again = engine.scheduler.trail_control.drain_metrics()  # drained once
    assert again.resumed_tokens == {} and again.preempted_generated == []


@pytest.mark.parametrize("young_arrived_first", [False, True], ids=["young-arrived-last", "young-arrived-first"])
def test_kv_pressure_evicts_a_young_request_not_a_protected_one(make_engine, young_arrived_first):
    """Seven usable blocks: "old" (predicted 100, 60 generated: protected under c = 0.5)
    holds five, "young" (predicted 30) two; a few tokens later "old" needs a sixth.

    vLLM then evicts the running request with the largest priority. "old" ranks worse
    (40 left against 25) and, in one case, arrived last, so only TRAIL's protection,
    encoded as the smallest priority, keeps it: the young one goes.
    """
    engine = make_engine(policy="trail", c=0.5, num_blocks=8)
    old = make_request("old", max_tokens=80, estimate=100, arrival_time=100.0)
    young = make_request("young", max_tokens=40, estimate=30, arrival_time=50.0 if young_arrived_first else 150.0)
    engine.add(old)
    engine.run(61)
    engine.add(young)
    for _ in range(12):
        engine.step()
        if young.num_preemptions:
            break
    assert young.num_preemptions == 1 and young.num_output_tokens < 0.5 * 30  # still young when evicted
    assert old.status == RequestStatus.RUNNING
    engine.run_to_completion()
    assert old.num_preemptions == 0
    assert engine.scheduler.trail_metrics.preemptions == {"memory": 1}
    assert (old.num_output_tokens, young.num_output_tokens) == (80, 40)


# -- the probe, seen from the scheduler --------------------------------------------


def test_the_prompt_reading_after_a_chunked_prefill_sets_the_first_prediction(make_engine, probe_file):
    """A 200-token prompt prefilled in 64-token chunks: no token and no belief until the
    chunk that completes it. Its reading p⁰ then replaces the prompt estimate and fixes
    ``r``, the first prediction; later decode readings refine the belief, not ``r``."""
    path, _ = probe_file
    engine = make_engine(probe_path=path, max_num_batched_tokens=64)
    engine.add(make_request("long", prompt_tokens=200, max_tokens=40, estimate=300))
    engine.readings["long"] = reading(1)  # about 77 tokens
    state = engine.scheduler.trail_tracker.get("long")
    chunks = 0
    while state.generated == 0:
        assert state.first_estimate is None and state.belief is None
        assert state.predicted_remaining == 300
        chunks += "long" in engine.step().num_scheduled_tokens
    assert chunks >= 4  # 200 tokens in 64-token chunks
    first = float(reading(1) @ BINS.representatives)
    assert state.generated == 1  # sampled in the step that read the prompt
    assert state.predicted_remaining == pytest.approx(first, rel=1e-3)
    assert state.initial_prediction == pytest.approx(first + 1, rel=1e-3)  # r: the whole answer's length
    initial = state.initial_prediction

    engine.readings["long"] = reading(6)  # decode readings: much longer than p⁰ said
    engine.run(8)
    assert state.initial_prediction == initial  # r stays put: the preemption rule needs it fixed
    assert state.predicted_remaining > first + 50


LONG = {"edges": [0, 256, 512], "probabilities": [0.0, 1.0]}  # the prompt predictor's "256 to 512 tokens"


@pytest.mark.parametrize(
    ("hint", "started_from_prior"),
    [
        (LONG, True),
        ({"edges": [0, 256, 512], "probabilities": [0.0, "1"]}, False),
        ({"edges": [0, 256, 512], "probabilities": [0.5]}, False),
        ({"edges": [0, 512, 256], "probabilities": [0.5, 0.5]}, False),
        ({"edges": [0, 256, 512], "probabilities": [-1.0, 2.0]}, False),
        ({"edges": list(range(2000)), "probabilities": [1.0] * 1999}, False),
        ("long", False),
    ],
    ids=["well-formed", "a-string", "too-few", "decreasing-edges", "negative", "too-many-bins", "not-a-mapping"],
)
def test_under_the_prompt_prior_a_belief_starts_from_the_prompt_distribution_a_malformed_one_is_ignored(
    make_engine, probe_file, hint, started_from_prior
):
    """Set live, the prompt prior starts the belief from the API server's distribution (its
    bins rebinned onto the probe's) and leaves out the probe's reading of the prompt; a hint
    that is not a distribution counts as absent, so the belief starts from that reading."""
    path, _ = probe_file
    engine = make_engine(probe_path=path)
    assert apply(engine.scheduler, {"refinementPrior": "prompt"}).error is None
    engine.add(make_request("a", max_tokens=20, estimate=384, distribution=hint))
    engine.readings["a"] = reading(0)  # the probe reads the prompt as "very short"
    state = engine.scheduler.trail_tracker.get("a")
    while state.generated == 0:
        engine.step()
    if started_from_prior:
        assert state.belief[: BINS.count // 2].sum() == pytest.approx(0.0)
        assert state.initial_prediction == pytest.approx(384 + 1, rel=1e-3)
    else:
        assert state.prompt_distribution is None
        assert state.initial_prediction == pytest.approx(float(reading(0) @ BINS.representatives) + 1, rel=1e-3)


def test_an_evidence_weight_set_live_tempers_the_readings_that_follow(make_engine, probe_file):
    """The probe's reading of the prompt moves a new request's belief as reading^weight."""
    path, _ = probe_file
    engine = make_engine(probe_path=path)
    assert apply(engine.scheduler, {"evidenceWeight": 0.25}).error is None
    engine.add(make_request("a", max_tokens=20, estimate=384))
    engine.readings["a"] = reading(2)
    state = engine.scheduler.trail_tracker.get("a")
    while state.generated == 0:
        engine.step()
    tempered = reading(2) ** 0.25
    assert state.initial_prediction == pytest.approx(
        float(tempered @ BINS.representatives / tempered.sum()) + 1, rel=1e-3
    )
    assert state.belief[2] < reading(2)[2] / reading(2).sum()  # less sure than the reading


@pytest.mark.parametrize("probe_ranks_after", [0, 6])
def test_an_admitted_request_keeps_its_prompt_estimates_rank_until_the_probe_ranks_it(
    make_engine, probe_file, probe_ranks_after
):
    """One slot: "a" is admitted on its short prompt estimate and the probe reads it long.
    It is displaced for "b" (predicted 100) once its belief ranks it: at its first reading
    by default, after ``probeRanksAfter`` generated tokens if set (under async scheduling one
    more is in flight when it goes)."""
    path, _ = probe_file
    engine = make_engine(probe_path=path, max_num_seqs=1, policy="trail", c=100.0)
    assert apply(engine.scheduler, {"probeRanksAfter": probe_ranks_after}).error is None
    a = make_request("a", max_tokens=40, estimate=10)
    engine.add(a, make_request("b", max_tokens=40, estimate=100))
    engine.readings["a"] = reading(BINS.count - 1)
    outputs = []
    while a.status != RequestStatus.PREEMPTED:
        outputs.append(engine.step())
        assert len(outputs) < 30
    assert admitted(outputs) == ["a", "b"]
    assert a.num_output_tokens + a.num_output_placeholders == max(1, probe_ranks_after) + engine.depth - 1


def test_a_request_aborted_mid_prefill_leaves_nothing_behind(make_engine, probe_file):
    path, _ = probe_file
    engine = make_engine(probe_path=path, max_num_batched_tokens=64)
    engine.add(make_request("aborted", prompt_tokens=200, estimate=300), make_request("other", estimate=10))
    engine.readings["other"] = reading(1)
    output = engine.step()
    assert output.num_scheduled_tokens["aborted"] > 0  # a chunk of its prompt is in flight (async) or done
    engine.scheduler.finish_requests("aborted", RequestStatus.FINISHED_ABORTED)
    assert engine.scheduler.trail_tracker.get("aborted") is None
    engine.run_to_completion()
    scheduler = engine.scheduler
    assert scheduler.trail_tracker.requests == {} and scheduler.requests == {}
    stats = scheduler.trail_control.stats()
    assert stats.running == [] and stats.waiting == []
    # Only "other" finished with output, so only its errors were measured.
    assert sorted(stage for stage, _ in scheduler.trail_metrics.errors) == ["first", "prompt", "refined"]


def test_a_probe_sent_to_an_idle_engine_rides_the_next_step_even_after_a_settings_change(make_engine, probe_file):
    """The engine runs no step while idle, so the change waits: a settings-only change
    after it must not drop the probe still on its way to the workers."""
    path, sha = probe_file
    engine = make_engine()
    scheduler = engine.scheduler
    data = path.read_bytes()
    assert apply(scheduler, {"predictEvery": 2}, data).error is None
    assert apply(scheduler, {"c": 0.3}).error is None
    assert "c" in apply(scheduler, {"c": -1}).error  # a refused change touches nothing
    config = scheduler.trail_control.config()
    assert config.probe.sha256 == sha and config.c == 0.3
    engine.add(make_request("r"))
    update = engine.step().trail_update
    assert update.predict_every == 2 and update.probe.sha256 == sha
    assert getattr(engine.step(), "trail_update", None) is None  # handed over once


def test_readings_of_a_probe_being_replaced_are_not_mixed_in(make_engine, probe_file, tmp_path):
    """A new probe is in force in the scheduler at once but reaches the workers with the
    next step: until their readings carry its sha256, the old probe's are ignored."""
    path, old_sha = probe_file
    engine = make_engine(probe_path=path)
    scheduler = engine.scheduler
    new_path = tmp_path / "new.safetensors"
    new_sha = write_probe(new_path)
    assert new_sha != old_sha and apply(scheduler, {}, new_path.read_bytes()).error is None
    engine.add(make_request("r", max_tokens=20, estimate=300))
    engine.readings["r"] = reading(1)
    state = scheduler.trail_tracker.get("r")
    engine.run(4)  # the workers still run the old probe
    assert scheduler.trail_control.stats().worker_probe_sha256 == old_sha
    assert state.belief is None and state.first_estimate is None
    assert state.predicted_remaining == 300 - state.generated  # the prompt estimate, counting down
    engine.probe_sha256 = new_sha  # the update arrived
    engine.run(2)
    assert scheduler.trail_control.stats().worker_probe_sha256 == new_sha
    assert state.belief is not None and state.predicted_remaining < 100


# -- the tracker follows what vLLM keeps ----------------------------------------------


def test_output_that_vllm_drops_is_not_counted(make_engine):
    """Resetting the prefix cache preempts every running request and, under async
    scheduling, drops the output still in flight (its positions are sampled again).
    The tracker must count only the tokens the request keeps (the engine checks it after
    every step): its remaining-length estimate and its measured errors depend on it."""
    engine = make_engine()
    request = make_request("r", max_tokens=20, estimate=50)
    engine.add(request)
    engine.run(5)
    assert engine.scheduler.reset_prefix_cache(reset_running_requests=True)
    engine.run_to_completion()
    assert request.num_output_tokens == 20 and request.num_preemptions == 1


@pytest.mark.parametrize(("tokens", "displaced"), [(19, True), (20, False)])
def test_protection_starts_at_c_times_r_tokens_on_both_classes(make_engine, tokens, displaced):
    """r = 40, c = 0.5: a short request arrives when the running one has ``tokens``
    tokens, counting the one in flight under async scheduling (a preempted request
    keeps it). It is displaced only while it has fewer than 20."""
    engine = make_engine(max_num_seqs=1, policy="trail", c=0.5)
    running = make_request("running", max_tokens=60, estimate=40)
    engine.add(running)
    while running.num_output_tokens + running.num_output_placeholders < tokens:
        engine.step()
    engine.add(make_request("short", max_tokens=4, estimate=4))
    engine.step()
    assert (running.status == RequestStatus.PREEMPTED) == displaced


# -- a probe that fails on the workers ------------------------------------------------


def test_a_probe_failing_on_the_workers_falls_back_to_first_come_first_served(make_engine, probe_file):
    """The runner drops a probe that raised and reports it; the scheduler then ranks by
    arrival (the failed probe's beliefs are not trusted), says why in the config and the
    stats, counts it for the metrics, and every request still finishes. A new probe
    restores length-aware ranking."""
    path, sha = probe_file
    engine = make_engine(probe_path=path, max_num_seqs=1, policy="trail", c=0.0)
    scheduler = engine.scheduler
    engine.add(make_request("first", max_tokens=3))
    engine.run(1)
    engine.probe_error = RuntimeError("CUDA error: an illegal memory access was encountered")
    engine.run(2)
    config = scheduler.trail_control.config()
    assert config.probe_failure is not None and sha[:12] in config.probe_failure
    assert "illegal memory access" in config.probe_failure
    assert scheduler.trail_control.stats().probe_failure == config.probe_failure
    assert config.policy.value == "trail"  # the settings in force are unchanged; the ranking falls back
    assert scheduler.trail_control.drain_metrics().probe_failures == 1
    # Arrival order wins now, whatever the estimates say.
    engine.add(make_request("long", max_tokens=4, estimate=500, arrival_time=time.time()))
    engine.add(make_request("short", max_tokens=4, estimate=5, arrival_time=time.time() + 1))
    outputs = engine.run_to_completion()
    assert admitted(outputs) == ["long", "short"]
    assert not scheduler.requests  # none lost
    # A new probe clears the failure.
    assert apply(scheduler, {}, path.read_bytes()).error is None
    assert scheduler.trail_control.config().probe_failure is None
    engine.add(make_request("long2", max_tokens=4, estimate=500, arrival_time=time.time()))
    engine.add(make_request("short2", max_tokens=4, estimate=5, arrival_time=time.time() + 1))
    engine.add(make_request("blocker", max_tokens=4, estimate=1, arrival_time=time.time() - 1))
    assert admitted(engine.run_to_completion()) == ["blocker", "short2", "long2"]


# -- the prediction guard ---------------------------------------------------------------

GUARDED = {
    "policy": "trail",
    "c": 2.0,
    "max_preemptions": None,
    "prediction_guard": True,
    "prediction_guard_window": 20,
    "prediction_guard_min_samples": 6,
}


def _serve_a_stream(engine: Engine, estimate) -> tuple[list[str], list[tuple[str, int]]]:
    """Forty requests of 3-40 tokens, one arriving per step, two slots; each predicted
    ``estimate(length)``. Returns the admission order and, per step, the guard's level and
    the policy preemptions so far."""
    lengths = [3 + (17 * i) % 38 for i in range(40)]
    admissions, trace = [], []
    for step in range(2000):
        if step < len(lengths):
            length = lengths[step]
            engine.add(make_request(f"q{step:02d}", max_tokens=length, estimate=estimate(length), arrival_time=step))
        elif not engine.scheduler.has_requests():
            break
        output = engine.step()
        admissions += [new.req_id for new in output.scheduled_new_reqs]
        trace.append((engine.scheduler.trail_guard.level.value, engine.scheduler.trail_metrics.preemptions["policy"]))
    engine.drain()
    return admissions, trace


def test_reversed_predictions_trip_the_guard_it_stops_preempting_and_serves_in_arrival_order(make_engine):
    engine = make_engine(max_num_seqs=2, **GUARDED)
    admissions, trace = _serve_a_stream(engine, lambda length: 60 - length)
    levels = [level for level, _ in trace]
    # The estimates that order the queue rank wrongly: straight to arrival order, for good.
    tripped = levels.index("arrival-order")
    assert set(levels[:tripped]) == {"trusting"} and set(levels[tripped:]) == {"arrival-order"}
    assert trace[tripped][1] > 0, "it preempted on the reversed predictions before it tripped"
    # From the trip on, nothing is preempted for the ranking's sake.
    assert {preempted for _, preempted in trace[tripped:]} == {trace[tripped][1]}
    # Requests admitted after the fallback were admitted first come, first served.
    later = admissions[len(admissions) - 10 :]
    assert later == sorted(later)
    stats = engine.scheduler.trail_control.stats().prediction_guard
    assert stats.level.value == "arrival-order" and stats.rank_correlation < 0
    assert engine.scheduler.trail_queues.policy.name.value == "fcfs"
    config = engine.scheduler.trail_control.config()
    assert config.policy.value == "trail" and config.c == 2.0  # the settings stay as set
    assert (config.effective_policy.value, config.prediction_guard_state) == ("fcfs", stats)  # what /config reports
    metrics.record(engine.scheduler.trail_control.drain_metrics())  # the drain carries the guard in its config
    assert REGISTRY.get_sample_value("trail_prediction_guard_level") == 2


def test_good_predictions_never_trip_the_guard(make_engine):
    engine = make_engine(max_num_seqs=2, **GUARDED)
    _, trace = _serve_a_stream(engine, lambda length: float(length))
    assert {level for level, _ in trace} == {"trusting"}
    stats = engine.scheduler.trail_control.stats().prediction_guard
    assert stats.rank_correlation > 0.9 and stats.samples == 20
    assert trace[-1][1] > 0 and stats.regret_ratio == 0.0  # it preempted, and none was regretted
    config = engine.scheduler.trail_control.config()
    assert (config.effective_policy.value, config.effective_c, config.prediction_guard_state.level.value) == (
        "trail",
        2.0,
        "trusting",
    )
