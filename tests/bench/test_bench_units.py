"""`trail bench` without an engine: workloads, policy selection, reports, bad inputs."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trail_contract.settings import SchedulerSettings
from trail_scheduler.assets import PromptFileError, is_short_request
from trail_scheduler.bench import policies as P
from trail_scheduler.bench.loadgen import RequestRecord
from trail_scheduler.bench.report import (
    compare,
    headroom,
    headroom_message,
    saturated_throughput,
    summarise,
    write_report,
)
from trail_scheduler.bench.runner import estimated_recomputed_tokens, preemption_ages, recomputed_tokens
from trail_scheduler.bench.servers import EndpointError, check_loopback, free_port, metric_sum, parse_metrics
from trail_scheduler.bench.workload import (
    BURST,
    DECODINGS,
    GREEDY,
    Answer,
    Load,
    Prompt,
    WorkloadError,
    _profile_key,
    arrival_times,
    build_requests,
    length_summary,
    load_prompts,
    parse_loads,
    profile_answers,
    sample_mixed,
    sample_prompts,
)
from trail_scheduler.length_mix import CHAT_MIX
from trail_scheduler.predictors import SHIPPED_BENCHMARK_SPLIT


def bench_error(*args: str) -> str:
    """The error `trail bench ARGS` stops with, before any engine starts."""
    from trail_scheduler.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(["bench", *args]) == 2
    assert stderr.getvalue().startswith("error: ")
    return stderr.getvalue()


# -- workloads ------------------------------------------------------------------------


def test_poisson_arrivals_are_seeded_and_have_the_asked_rate():
    times = arrival_times(4000, 2.0, seed=7)
    assert times == arrival_times(4000, 2.0, seed=7)
    assert times != arrival_times(4000, 2.0, seed=8)
    assert times[0] == 0 and all(b >= a for a, b in zip(times, times[1:]))
    assert abs(len(times) / times[-1] - 2.0) < 0.15  # ~4000 exponential gaps of mean 0.5 s
    assert arrival_times(5, None, seed=0) == [0.0] * 5  # burst


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_bad_rates_are_refused(rate):
    with pytest.raises(WorkloadError, match="positive"):
        arrival_times(3, rate, seed=0)


def test_jsonl_prompts_load_and_bad_files_say_where(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"id": "a", "prompt": "hi"}\n\n{"id": 2, "prompt": "there"}\n')
    assert load_prompts(good) == [Prompt("a", "hi"), Prompt("2", "there")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"text": "no id"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2"):
        load_prompts(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(WorkloadError, match="no prompts"):
        load_prompts(empty)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(WorkloadError, match="not unique"):
        load_prompts(dup)


def test_sampling_is_seeded_and_skips_prompts_too_long():
    pool = [Prompt(str(i), "word " * i) for i in range(1, 50)]
    count = lambda text: len(text.split())  # noqa: E731
    first = sample_prompts(pool, 10, seed=3, max_prompt_tokens=20, count_tokens=count)
    assert first == sample_prompts(pool, 10, seed=3, max_prompt_tokens=20, count_tokens=count)
    assert all(count(p.prompt) <= 20 for p in first) and len({p.id for p in first}) == 10
    with pytest.raises(WorkloadError, match="only 20 usable"):
        sample_prompts(pool, 30, seed=3, max_prompt_tokens=20, count_tokens=count)


def test_a_chat_mixed_sample_of_profiled_prompts_says_which_bin_the_pool_lacks():
    pool = [Prompt(str(n), f"p{n}") for n in range(1, 513)]
    lengths = {str(n): n for n in range(1, 513)} | {str(n): 512 for n in range(480, 513)}  # 33 at the cap
    sample = sample_mixed(pool, lengths, 100, seed=4, cap=512, mix=CHAT_MIX)
    assert sample == CHAT_MIX.draw(pool, lambda p: lengths[p.id], 100, 512, seed=4)
    with pytest.raises(WorkloadError, match=r"needs 42 answers of 512-512 tokens and the pool has 33"):
        sample_mixed(pool, lengths, 200, seed=4, cap=512, mix=CHAT_MIX)


def test_the_default_pool_is_the_benchmark_split_the_shipped_predictors_never_saw():
    split = json.loads(SHIPPED_BENCHMARK_SPLIT.read_text())
    pool = load_prompts()
    assert sorted(p.id for p in pool) == sorted(split["ids"]) and len(pool) == split["benchmark_size"] == 600
    # Chosen by their form (one-line instructions and questions), never by their answers.
    assert split["short_requests_first"] and all(is_short_request(p.prompt) for p in pool)


def test_cached_answers_are_kept_per_decoding_and_never_reused_across_decodings(tmp_path):
    prompts = [Prompt("a", "short one"), Prompt("b", "long one")]
    sampled = DECODINGS["sampled"]
    cache = tmp_path / "answers.json"
    cache.write_text(
        json.dumps(
            {
                _profile_key("m", 512, prompts[0], GREEDY): {"tokens": 40, "text_sha256": "x"},
                _profile_key("m", 512, prompts[1], GREEDY): {"tokens": 0, "text_sha256": "y"},
            }
        )
    )
    unreachable = f"http://127.0.0.1:{free_port()}"
    # An empty answer still costs one token, and has no text to check against.
    assert profile_answers(unreachable, "m", prompts, 512, GREEDY, cache=cache) == {
        "a": Answer(40, "x"),
        "b": Answer(1, None),
    }
    import httpx

    # The same prompts under sampling, a changed prompt text, or another cap: profiled afresh,
    # which here needs the (unreachable) engine.
    for prompt, cap, decoding in (
        (prompts[0], 512, sampled),
        (Prompt("a", "changed"), 512, GREEDY),
        (prompts[0], 256, GREEDY),
    ):
        with pytest.raises(httpx.ConnectError):
            profile_answers(unreachable, "m", [prompt], cap, decoding, cache=cache)


def test_each_request_carries_the_sampling_its_profile_was_made_with():
    from trail_scheduler.bench.loadgen import request_body
    from trail_scheduler.bench.workload import BenchRequest, prompt_seed

    request = BenchRequest("p1", "Give three tips.", 33, 0.0, "sha", 12)
    greedy = request_body("m", request, GREEDY)
    assert greedy["temperature"] == 0 and "seed" not in greedy and "top_p" not in greedy
    sampled = request_body("m", request, DECODINGS["sampled"])
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"]) == (0.7, 0.9, prompt_seed("p1"))
    for body in (greedy, sampled):
        assert body["max_tokens"] == 33 and body["ignore_eos"] is True


def test_a_predictor_counts_as_trained_on_a_decoding_only_with_the_same_sampling():
    sampled = DECODINGS["sampled"]
    assert GREEDY.trained_on({"temperature": 0.0, "top_p": 1.0, "max_tokens": 512})
    assert GREEDY.trained_on({"temperature": 0})
    assert not GREEDY.trained_on({"temperature": 0.7, "top_p": 0.9})
    assert sampled.trained_on({"temperature": 0.7, "top_p": 0.9})
    assert not sampled.trained_on({"temperature": 0.0})
    assert not sampled.trained_on({"temperature": 0.7, "top_p": 1.0})
    assert not GREEDY.trained_on({})


def test_every_policy_gets_the_same_requests():
    prompts = [Prompt(str(i), f"p{i}") for i in range(5)]
    answers = {str(i): Answer(10 * (i + 1), f"h{i}") for i in range(5)}
    one, two = build_requests(prompts, answers, 1.0, seed=1), build_requests(prompts, answers, 1.0, seed=1)
    assert one == two and [r.output_tokens for r in one] == [10, 20, 30, 40, 50]
    assert [r.text_sha256 for r in one] == [f"h{i}" for i in range(5)]


def test_length_summary_counts_answers_at_the_cap():
    summary = length_summary([10, 20, 512, 512], 512)
    assert summary["at_cap"] == 2 and summary["mean"] == 263.5
    assert (summary["p25"], summary["median"], summary["p75"]) == (17.5, 266.0, 512.0)  # as the run summaries


def test_short_requests_are_one_line_instructions_or_questions_chosen_by_form(tmp_path):
    assert is_short_request("Give three tips for staying healthy.")
    assert is_short_request("what is stable diffusion")
    assert not is_short_request("I have this code:\nfoo()")  # two lines
    assert not is_short_request("Give " + "very " * 60 + "long tips")  # over 200 characters
    assert not is_short_request("My dog barks at night.")  # neither an instruction nor a question word
    mixed = tmp_path / "mixed.jsonl"
    lines = ['{"id": "a", "prompt": "List three fruits."}', '{"id": "b", "prompt": "Here is my essay:\\nfix it"}']
    mixed.write_text("\n".join(lines) + "\n")
    assert [p.id for p in load_prompts(mixed, short_requests=True)] == ["a"]


def test_the_oracles_headroom_is_reported_and_too_little_is_a_warning():
    summary = [
        {"policy": "fcfs", "rate": "burst", "mean_latency_s": 200.0},
        {"policy": "trail+", "rate": "burst", "mean_latency_s": 192.0},
        {"policy": "fcfs", "rate": "0.2", "mean_latency_s": 100.0},
        {"policy": "trail+", "rate": "0.2", "mean_latency_s": 55.0},
    ]
    assert headroom(summary, "burst") == pytest.approx(0.96) and headroom(summary, "1.0") is None
    line, warn = headroom_message(headroom(summary, "burst"), "burst")
    assert warn and "0.96x" in line and "little to reorder" in line
    line, warn = headroom_message(headroom(summary, "0.2"), "0.2")
    assert not warn and line == "oracle headroom @ 0.2: TRAIL+ mean latency 0.55x FCFS's"


# -- policies ---------------------------------------------------------------------------


def test_policy_order_puts_probe_entries_after_probe_free_ones():
    entries, notes = P.resolve(["trail", "fcfs", "trail+", "sjf"], [0.0, 0.8], have_probe=True, explicit=True)
    names = [e.name for e in entries]
    assert names[:3] == ["fcfs", "trail+", "sjf"]  # the oracle's headroom is known before any TRAIL number
    first_probe = next(i for i, e in enumerate(entries) if e.probe)
    assert all(e.probe for e in entries[first_probe:]) and not any(e.probe for e in entries[:first_probe])
    assert "trail@c=0" in names and "trail@c=0.8" not in names  # 0.8 is 'trail' itself
    assert notes == []


def test_runs_alternate_round_by_round_so_drift_favours_no_policy():
    from trail_scheduler.bench.config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = ["--loads", "1.2,burst", "--seeds", "0,1", "--seeded-loads", "1.2,burst", "--c-sweep", "0"]
    config = config_from_args(parser.parse_args([*args, "--policies", "fcfs,trail+,trail-prompt"]))
    runs = [(entry.name, load.label, seed) for entry, load, seed in config.schedule()]
    forward, backward = ["fcfs", "trail+", "trail-prompt"], ["trail-prompt", "trail+", "fcfs"]
    rounds = [("burst", 0), ("1.2x", 0), ("1.2x", 1), ("burst", 1)]  # the capacity burst first
    expected = []
    for turn, (load, seed) in enumerate(rounds):
        names = forward if turn % 2 == 0 else backward
        if (load, seed) == ("burst", 0):  # the sweep's extra: the heaviest load, the first seed
            names = [*names, "trail@c=0"]  # with the shipped probe: after the probe-free entries
        expected += [(name, load, seed) for name in names]
    assert runs == expected
    # Every entry's runs, each exactly once.
    assert sorted(runs) == sorted((e.name, load.label, s) for e in config.entries for load, s in config.runs_for(e))


def test_refinement_without_a_probe_is_an_error_when_asked_and_a_note_by_default():
    with pytest.raises(P.PolicyError, match="needs a probe"):
        P.resolve(["trail"], [], have_probe=False, explicit=True)
    entries, notes = P.resolve(list(P.DEFAULT_POLICIES), [2.0], have_probe=False, explicit=False)
    assert "trail" not in [e.name for e in entries] and "trail-prompt@c=2" in [e.name for e in entries]
    assert notes and "no --probe" in notes[0]


def test_unknown_policy_is_named():
    with pytest.raises(P.PolicyError, match="unknown policy 'srpt'"):
        P.resolve(["fcfs", "srpt"], [], have_probe=False, explicit=True)


def test_an_entry_with_settings_runs_beside_the_one_it_changes_and_every_entry_sets_every_setting():
    """Entries run one after another on one engine: each sends all settings, so
    ``trail/preemptionMargin=128`` leaves no margin behind for the ``trail`` after it."""
    entries, _ = P.resolve(
        ["fcfs", "trail/preemptionMargin=128/refinementPrior=prompt", "trail", "trail-prompt/c=0"],
        [],
        have_probe=True,
        explicit=True,
    )
    by_name = {e.name: e for e in entries}
    changed = by_name["trail/preemptionMargin=128/refinementPrior=prompt"]
    assert changed.probe and changed.engine == P.TRAIL
    assert (
        changed.settings(300.0)
        == SchedulerSettings(
            policy="trail", c=0.8, max_wait_seconds=300.0, preemption_margin=128, refinement_prior="prompt"
        ).wire()
    )
    assert by_name["trail"].settings(None) == SchedulerSettings(policy="trail", c=0.8, max_wait_seconds=None).wire()
    assert not by_name["trail-prompt/c=0"].probe and by_name["trail-prompt/c=0"].settings(300.0)["c"] == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("fcfs/c=0", "unknown policy 'fcfs/c=0'"),
        ("trail/c", "is not setting=value"),
        ("trail/policy=fcfs", "is not setting=value"),
        ("trail/maxWaitSeconds=1", "is not setting=value"),
        ("trail/speed=2", "is not setting=value"),
        ("trail/c=-1", "c must be a finite number between 0 and 1000"),
        ("trail/refinementPrior=maybe", "unknown refinement prior 'maybe'"),
    ],
)
def test_an_entrys_settings_are_checked_before_anything_runs(name, message):
    with pytest.raises(P.PolicyError, match=re.escape(message)):
        P.resolve(["fcfs", name], [], have_probe=True, explicit=True)


# -- reports ----------------------------------------------------------------------------


def _record(i: int, sent: float, first: float, done: float, tokens: int, error: str | None = None) -> RequestRecord:
    return RequestRecord(str(i), sent, sent, first, done if error is None else None, 10, tokens, tokens, error)


def test_summary_numbers_and_files(tmp_path):
    records = [_record(0, 0.0, 0.5, 2.0, 20), _record(1, 1.0, 1.5, 5.0, 40), _record(2, 1.0, None, None, 0, "boom")]
    row = summarise("fcfs", 2.0, records, 6.0, preemptions=3, recomputed_tokens=90)
    assert (row["completed"], row["failed"]) == (2, 1)
    assert row["mean_latency_s"] == pytest.approx(3.0) and row["mean_ttft_s"] == pytest.approx(0.5)
    # Quantiles interpolate linearly between the two latencies, 2 s and 4 s.
    assert (row["median_latency_s"], row["p95_latency_s"]) == (pytest.approx(3.0), pytest.approx(3.9))
    assert math.isnan(summarise("fcfs", None, records[2:], 1.0, 0, 0)["median_latency_s"])  # none completed
    assert row["output_throughput_tok_s"] == pytest.approx(60 / 5.0)  # first send to last finish
    assert row["latency_per_output_token_s"] == pytest.approx((2 / 20 + 4 / 40) / 2)
    report = {
        "title": "t",
        "summary": [row, {**row, "policy": "trail", "rate": "burst"}],
        "notes": [],
        "requests": [{"policy": "fcfs", "rate": "2", **vars(r)} for r in records],
    }
    row["load_avg_1m"] = 1.0
    paths = write_report(tmp_path, report)
    assert json.loads(paths["json"].read_text())["summary"][0]["policy"] == "fcfs"
    assert paths["csv"].read_text().splitlines()[0].startswith("policy,rate,seed,arrival_rate_per_s,requests")
    for key in ("latency_png", "cdf_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_parsing_sums_matching_labels():
    text = (
        '# HELP x\nvllm:num_preemptions_total{engine="0",model_name="m"} 3.0\n'
        'vllm:num_preemptions_total{engine="1",model_name="m"} 2.0\ntrail_preemptions_total{reason="policy"} 4\n'
    )
    samples = parse_metrics(text)
    assert metric_sum(samples, "vllm:num_preemptions_total") == 5.0
    assert metric_sum(samples, "vllm:num_preemptions_total", engine="1") == 2.0
    assert metric_sum(samples, "absent") == 0.0


def test_preemption_ages_come_from_trail_serves_histogram():
    """Three preemptions in the run (one before it): at 2, 10 and 300 tokens."""

    def histogram(count: int, total: int, within_16: int) -> dict:
        name = "trail_preempted_generated_tokens"
        return parse_metrics(
            f'{name}_count{{reason="policy"}} {count}\n{name}_sum{{reason="policy"}} {total}\n'
            f'{name}_bucket{{le="16.0",reason="policy"}} {within_16}\n'
        )

    ages = preemption_ages(histogram(1, 4, 1), histogram(4, 316, 3))
    assert ages == {"mean_generated_at_preemption": pytest.approx(104.0), "preempted_within_16_tokens": 2 / 3}
    assert preemption_ages({}, {}) == {"mean_generated_at_preemption": None, "preempted_within_16_tokens": None}


def test_recomputed_tokens_are_trail_serves_count_and_an_upper_bound_on_stock_vllm():
    """trail serve counts what its resumed requests prefilled again (the prefix cache's share
    apart); stock vLLM counts nothing, so each preemption is charged prompt + half the output."""
    before = parse_metrics('trail_resumed_tokens_total{source="recomputed"} 100\n')
    after = parse_metrics(
        'trail_resumed_tokens_total{source="recomputed"} 130\ntrail_resumed_tokens_total{source="prefix_cache"} 64\n'
    )
    assert recomputed_tokens(before, after) == 30
    assert recomputed_tokens({}, {}) == 0  # nothing resumed since it started
    records = [RequestRecord("a", 0, 0, 1, 2, prompt_tokens=10, output_tokens=40)]
    assert estimated_recomputed_tokens(records, preemptions=2) == 2 * (10 + 20)
    assert estimated_recomputed_tokens(records, preemptions=0) == 0


# -- the command's errors -----------------------------------------------------------------


def test_only_loopback_endpoints():
    assert check_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    with pytest.raises(EndpointError, match="loopback"):
        check_loopback("http://10.0.0.5:8000")


def test_cli_unknown_policy():
    assert "unknown policy 'lifo'" in bench_error("--quick", "--policies", "fcfs,lifo")


def test_cli_missing_probe_file(tmp_path):
    assert "not found" in bench_error("--quick", "--probe", str(tmp_path / "missing.safetensors"))


def test_cli_refinement_without_a_probe(monkeypatch, tmp_path):
    from trail_scheduler.bench import config

    monkeypatch.setattr(config, "SHIPPED_PROBE", tmp_path / "not-shipped.safetensors")
    assert "needs a probe" in bench_error("--quick", "--policies", "fcfs,trail")


def test_a_reversed_copy_predicts_the_mirror_of_the_original_and_loads_as_it(tmp_path):
    import torch

    from trail_scheduler.bench.probes import reversed_bins
    from trail_scheduler.predictors import SHIPPED_PROMPT_PREDICTOR
    from trail_scheduler.probe import load_probe
    from trail_scheduler.probe.prompt import load_prompt_predictor

    reversed_path = reversed_bins(SHIPPED_PROMPT_PREDICTOR, tmp_path / "prompt.safetensors")
    original, flipped = load_probe(SHIPPED_PROMPT_PREDICTOR), load_prompt_predictor(reversed_path).loaded
    hidden = torch.randn(5, original.hidden_size)
    with torch.inference_mode():
        expected = original.module.probabilities(hidden).flip(-1)
        assert torch.allclose(flipped.module.probabilities(hidden), expected, atol=1e-6)
    assert flipped.bins == original.bins
    assert flipped.training["bins_reversed_from"] == original.sha256
    assert flipped.training["data"] == original.training["data"]  # the decoding check still reads it


def test_cli_reversed_bins_need_a_predictor_and_engines_the_bench_starts(monkeypatch, tmp_path):
    from trail_scheduler.bench import config

    monkeypatch.setenv("TRAIL_ADMIN_TOKEN", "x")
    endpoints = ("--trail-endpoint", "http://127.0.0.1:9", "--admin-endpoint", "http://127.0.0.1:9")
    assert "not --trail-endpoint" in bench_error("--quick", "--reverse-bins", "both", *endpoints)
    monkeypatch.setattr(config, "SHIPPED_PROBE", tmp_path / "not-shipped.safetensors")
    message = bench_error("--quick", "--policies", "fcfs,trail-prompt", "--reverse-bins", "probe")
    assert "no predictor to reverse" in message


def test_cli_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("TRAIL_ADMIN_TOKEN", "x")
    port = free_port()  # nothing listens here
    message = bench_error(
        "--quick",
        "--policies",
        "fcfs,trail",
        "--trail-endpoint",
        f"http://127.0.0.1:{port}",
        "--admin-endpoint",
        f"http://127.0.0.1:{port}",
    )
    assert "not a reachable OpenAI-compatible server" in message


def test_cli_one_trail_endpoint_serves_one_kind_of_policy(monkeypatch):
    monkeypatch.setenv("TRAIL_ADMIN_TOKEN", "x")
    assert "cannot serve both" in bench_error(
        "--quick",
        "--policies",
        "fcfs,trail-prompt,trail",
        "--capacity",
        "30",
        "--trail-endpoint",
        "http://127.0.0.1:9",
        "--admin-endpoint",
        "http://127.0.0.1:9",
    )


def test_cli_admin_endpoint_needs_a_token(monkeypatch):
    monkeypatch.delenv("TRAIL_ADMIN_TOKEN", raising=False)
    message = bench_error("--quick", "--trail-endpoint", "http://127.0.0.1:1", "--admin-endpoint", "http://127.0.0.1:2")
    assert "needs a token" in message


@pytest.mark.parametrize(
    ("status", "body", "expected", "why"),
    [(404, b"", None, "VLLM_SERVER_DEV_MODE=1"), (200, b'{"success": false}', False, "blocks still held")],
)
def test_an_endpoint_that_cannot_empty_its_prefix_cache_is_noted_once(status, body, expected, why):
    """A user's own endpoint outside vLLM's dev mode (404), or one whose blocks stay held."""
    import http.server
    import threading

    from trail_scheduler.bench.engines import empty_prefix_cache
    from trail_scheduler.bench.servers import Server

    class Reply(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reply) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        server, notes = Server(f"http://127.0.0.1:{httpd.server_address[1]}"), []
        assert server.reset_prefix_cache(attempts=2) is expected
        assert empty_prefix_cache(server, notes) is expected and empty_prefix_cache(server, notes) is expected
        httpd.shutdown()
    assert len(notes) == 1 and why in notes[0] and notes[0].startswith(server.base), notes


def test_cli_remote_endpoint_refused():
    assert "loopback" in bench_error("--quick", "--stock-endpoint", "http://example.com:8000")


@pytest.mark.parametrize(("rates", "message"), [("1,-2", "positive"), ("0", "positive"), ("fast", "numbers")])
def test_cli_bad_rate(rates, message):
    assert message in bench_error("--quick", "--rates", rates)


# -- loads relative to capacity, seeds --------------------------------------------------


def test_capacity_is_the_burst_throughput_while_every_batch_slot_was_busy():
    # Two slots, four requests of 10 tokens, each decoding 1 token/s after a 0 s prefill:
    # 0 and 1 run 0–10 s, 2 and 3 run 10–20 s. The slots stay full until the third finish (20 s):
    # 40 tokens in 20 s. The first request alone finishing early would not change that.
    records = [_record(i, 0.0, 10.0 * (i // 2), 10.0 * (i // 2 + 1), 10) for i in range(4)]
    assert saturated_throughput(records, slots=2) == pytest.approx(40 / 20)
    # A long drain does not dilute it: a fifth request running alone 20–120 s (100 tokens).
    drained = records + [_record(4, 0.0, 20.0, 120.0, 100)]
    # Unfinished < 2 from the fourth finish on (20 s); request 4 had produced 0 tokens by then.
    assert saturated_throughput(drained, slots=2) == pytest.approx(40 / 20)
    assert saturated_throughput(records[:2], slots=2) is None  # never more requests than slots


def test_a_share_of_capacity_offers_that_many_output_tokens_per_second():
    assert Load(share=1.2).requests_per_second(capacity_tok_s=100.0, mean_output_tokens=250.0) == pytest.approx(0.48)
    assert Load(rate=0.3).requests_per_second(None, 250.0) == 0.3
    assert BURST.requests_per_second(None, 250.0) is None
    with pytest.raises(WorkloadError, match="capacity"):
        Load(share=0.7).requests_per_second(None, 250.0)
    assert [load.label for load in parse_loads("burst,1.2,0.7x,1.2", relative=True)] == ["0.7x", "1.2x", "burst"]
    assert [load.label for load in parse_loads("0.2,burst", relative=False)] == ["0.2", "burst"]
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(WorkloadError):
            parse_loads(bad, relative=True)


def _row(policy, rate, seed, mean, ttft=1.0, p99=10.0, tok_s=50.0, preemptions=0):
    return {
        "policy": policy,
        "rate": rate,
        "seed": seed,
        "mean_latency_s": mean,
        "mean_ttft_s": ttft,
        "p99_latency_s": p99,
        "output_throughput_tok_s": tok_s,
        "preemptions": preemptions,
        "recomputed_tokens": 10 * preemptions,
    }


def test_comparison_is_against_fcfs_on_the_same_seed_with_the_oracles_share():
    summary = [
        _row("fcfs", "burst", 0, 10.0),
        _row("trail+", "burst", 0, 5.0),
        _row("trail", "burst", 0, 6.0, ttft=0.2, preemptions=4),
        _row("fcfs", "burst", 1, 20.0),
        _row("trail+", "burst", 1, 10.0),
        _row("trail", "burst", 1, 15.0, ttft=0.4, preemptions=2),
        _row("fcfs", "0.7x", 0, 4.0),
        _row("trail", "0.7x", 0, 4.0),
    ]
    rows = {(r["policy"], r["rate"]): r for r in compare(summary)}
    trail = rows[("trail", "burst")]
    assert trail["seeds"] == 2
    assert trail["mean_latency"] == pytest.approx([(0.6 + 0.75) / 2, 0.6, 0.75])
    assert trail["mean_ttft"] == pytest.approx([0.3, 0.2, 0.4])
    # Seed 0: 4 of the oracle's 5 s gained; seed 1: 5 of 10.
    assert trail["oracle_gain_share"] == pytest.approx([(0.8 + 0.5) / 2, 0.5, 0.8])
    assert trail["preemptions"] == 3
    assert trail["preempted_within_16_tokens"] is None  # no engine count in these rows
    assert rows[("trail", "0.7x")]["oracle_gain_share"] is None  # no oracle run at that load
    assert ("fcfs", "burst") not in rows


def test_cli_relative_loads_need_fcfs_or_a_capacity():
    assert "need the 'fcfs' policy" in bench_error("--quick", "--policies", "trail+", "--c-sweep", "")
    assert "more requests than batch slots" in bench_error("--quick", "--requests", "2")
    assert "not run" in bench_error("--quick", "--seeded-loads", "0.5")
    # The preset's seeded loads apply where they are run: the full preset's 1.5x is not asked for here.
    from trail_scheduler.bench.config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--loads", "burst", "--capacity", "30", "--c-sweep", ""]))
    assert config.seeded_loads == {"burst"} and config.seeds == (0, 1, 2)
    # The headline's prompts come at their natural mix; resampling by answer length is a study's choice.
    assert config.length_mix == "natural" and config.decoding.name == "greedy"
    assert config_from_args(parser.parse_args(["--quick", "--length-mix", "chat"])).length_mix == "chat"
    assert [(load.label, seed) for load, seed in config.runs_for(P.BASE_ENTRIES["fcfs"])] == [
        ("burst", s) for s in (0, 1, 2)
    ]
    # A switch named in --policies is compared on the same work as the rest: every seed. Only the
    # c sweep's extras stay at the heaviest load and first seed.
    switch = P.with_overrides("trail/preemptionMargin=128")
    assert [seed for _, seed in config.runs_for(switch)] == [0, 1, 2]
    assert [seed for _, seed in config.runs_for(P.sweep_entry(0.0, refined=True))] == [0]
    assert "positive" in bench_error("--quick", "--loads", "0.7,-1")
    assert "whole numbers" in bench_error("--quick", "--seeds", "a")
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):  # argparse's own refusal
        from trail_scheduler.cli import main

        main(["bench", "--quick", "--loads", "1", "--rates", "1"])


# -- the ideal headroom, simulated ----------------------------------------------------------


def test_the_fluid_engine_serves_first_come_or_shortest_remaining_first():
    from trail_scheduler.bench.simulate import ideal_ratio, mean_latency

    # One slot, both at once: FCFS 3 then 1 (latencies 3, 4); shortest first 1 then 3 (1, 4).
    assert mean_latency([3, 1], [0, 0], slots=1, shortest_first=False) == pytest.approx(3.5)
    assert mean_latency([3, 1], [0, 0], slots=1, shortest_first=True) == pytest.approx(2.5)
    # A short arrival preempts a long one (free preemption): 11 and 1, against FCFS's 10 and 9.
    assert mean_latency([10, 1], [0, 2], slots=1, shortest_first=True) == pytest.approx(6.0)
    assert mean_latency([10, 1], [0, 2], slots=1, shortest_first=False) == pytest.approx(9.5)
    # Nobody queues: each request takes length x slots (its slot's share of the capacity).
    assert mean_latency([4, 8], [0, 100], slots=2, shortest_first=False) == pytest.approx(12.0)
    assert ideal_ratio([4, 8], [0, 100], slots=2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_latency([1], [0, 1], slots=1, shortest_first=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=12),
    st.lists(st.floats(0, 200, allow_nan=False), min_size=12, max_size=12),
    st.integers(1, 4),
)
def test_no_request_beats_its_own_decode_time_and_one_slot_shortest_first_is_optimal(lengths, times, slots):
    from trail_scheduler.bench.simulate import mean_latency

    arrivals = times[: len(lengths)]
    floor = slots * sum(lengths) / len(lengths)
    for shortest_first in (False, True):
        assert mean_latency(lengths, arrivals, slots, shortest_first) >= floor - 1e-6
    if slots == 1:
        assert mean_latency(lengths, arrivals, 1, True) <= mean_latency(lengths, arrivals, 1, False) + 1e-6


def test_the_bench_refuses_predictors_trained_on_another_decoding(tmp_path):
    import torch

    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    def probe(name: str, sampling: dict) -> str:
        path = tmp_path / name
        training = {"data": {"sampling": sampling}}
        save_probe(LengthProbe(576, 10).eval(), LengthBins.uniform(), path, model="m", layer=10, training=training)
        return str(path)

    torch.manual_seed(0)
    sampled = probe("sampled.safetensors", {"temperature": 0.7, "top_p": 0.9, "max_tokens": 512})
    greedy = probe("greedy.safetensors", {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512})
    message = bench_error("--quick", "--policies", "fcfs,trail", "--probe", sampled, "--decoding", "greedy")
    assert "trained on answers decoded with" in message and "'greedy'" in message
    message = bench_error("--quick", "--policies", "fcfs,trail", "--probe", greedy, "--decoding", "sampled")
    assert "'sampled'" in message and "--decoding" in message


def test_only_the_sampled_protocol_turns_chunked_prefill_off_on_every_engine():
    from trail_scheduler.bench.config import engine_args
    from trail_scheduler.bench.workload import MAX_MODEL_LEN

    assert engine_args(8, GREEDY) == ("--max-num-seqs", "8")
    sampled = engine_args(8, DECODINGS["sampled"])
    assert "--no-enable-chunked-prefill" in sampled
    assert int(sampled[sampled.index("--max-num-batched-tokens") + 1]) >= MAX_MODEL_LEN  # every request fits a step
