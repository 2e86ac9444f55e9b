"""`trail bench --quick` end to end on the real engine (CI's smoke run).

It asserts only that the run completes and that the report is well formed, not any
speed-up: a few tiny requests on a shared CPU measure nothing about policies (fewer and
shorter still than the preset's, to keep the suite quick).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from trail_scheduler.bench.config import PRESETS
from trail_scheduler.bench.policies import BASE_ENTRIES
from trail_scheduler.bench.probes import untrained_probe
from trail_scheduler.bench.report import SUMMARY_FIELDS

pytestmark = pytest.mark.engine
REQUESTS, CAP = 4, 16


def test_quick_preset_runs_every_policy_and_writes_a_well_formed_report(tmp_path):
    # An untrained probe: exercises the refinement entries, on their own engine.
    probe = untrained_probe(tmp_path / "untrained.safetensors")
    out = tmp_path / "report"
    trail = Path(sys.executable).with_name("trail")
    result = subprocess.run(
        [str(trail), "bench", "--quick", "--probe", str(probe), "--output", str(out)]
        + ["--requests", str(REQUESTS), "--output-cap", str(CAP)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    preset = PRESETS["quick"]
    rates = {load.label for load in preset.loads}
    rows = {(row["policy"], row["rate"]): row for row in report["summary"]}
    # The capacity was measured on stock vLLM's burst, and the relative load offered a share of it.
    capacity = report["capacity"]["output_tok_s"]
    assert capacity > 0 and report["capacity"]["batch_slots"] == preset.max_num_seqs
    mean_tokens = report["lengths"]["mean"]
    for (name, rate), row in rows.items():
        if rate != "burst":
            share = float(rate.removesuffix("x"))
            assert row["arrival_rate_per_s"] == pytest.approx(share * capacity / mean_tokens), name
    # What an ideal order could gain was simulated for every load before any run.
    assert set(report["ideal_ratio"]) == rates and all(0 < r < 1.5 for r in report["ideal_ratio"].values())
    comparison = {(row["policy"], row["rate"]) for row in report["comparison"]}
    assert comparison == set(rows) - {("fcfs", rate) for rate in rates}
    expected = {(name, rate) for name in ("fcfs", "sjf", "spf", "trail-prompt", "trail", "trail+") for rate in rates}
    highest = "burst"  # the sweep runs at the highest rate only; a burst is the highest
    expected |= {(f"trail@c={c:g}", highest) for c in preset.c_sweep}
    assert set(rows) == expected
    # The runs alternated: each load's runs are together, FCFS first in the first round and last in the next.
    order = [(row["policy"], row["rate"]) for row in report["summary"]]
    rounds = list(dict.fromkeys(rate for _, rate in order))
    assert [rate for _, rate in order] == sorted((rate for _, rate in order), key=rounds.index)
    assert order[0][0] == "fcfs" and [p for p, r in order if r == rounds[1]][-1] == "fcfs"
    assert report["config"]["policies"]["fcfs"] == BASE_ENTRIES["fcfs"].description
    # Every engine served a full batch before its first measured run, so none starts cold.
    assert report["warm_up"].keys() == {"stock", "trail", "trail with the probe"}
    assert all(w["requests"] == preset.max_num_seqs and w["seconds"] > 0 for w in report["warm_up"].values())
    # Every run, on every engine, started with an empty prefix cache.
    assert all(row["prefix_cache_reset"] is True and row["prefix_cache_hit_tokens"] >= 0 for row in rows.values())
    assert not [note for note in report["notes"] if "prefix cache" in note]
    for row in rows.values():
        assert row["completed"] == row["requests"] == REQUESTS, row
        for field in ("mean_latency_s", "p99_latency_s", "mean_ttft_s", "output_throughput_tok_s"):
            assert math.isfinite(row[field]) and row[field] > 0, (field, row)
        assert row["mean_ttft_s"] <= row["mean_latency_s"] <= row["p99_latency_s"] + 1e-9
        assert row["preemptions"] >= 0 and row["recomputed_tokens"] >= 0
    # Every request got exactly its profiled answer, under every policy: its length, and the very
    # text it was profiled with (greedy decoding at profiling and at serving alike).
    assert report["config"]["decoding"]["name"] == "greedy"
    sent = [r for r in report["requests"] if r["error"] is None]
    assert len(sent) == len(expected) * REQUESTS
    assert all(r["output_tokens"] == r["expected_tokens"] for r in sent)
    assert all(r["matches_profile"] is True for r in sent)
    assert all(row["served_as_profiled"] == 1.0 for row in rows.values())
    lengths = report["lengths"]
    assert lengths["count"] == REQUESTS and 1 <= lengths["min"] <= lengths["max"] <= CAP
    # The answers were profiled on an engine the runs use: one stock vLLM and two trail serve.
    logs = [log.name.rsplit("-", 1)[0] for log in out.glob("trail-bench-logs-*/*.log")]
    assert sorted(logs) == ["stock-vllm", "trail-serve", "trail-serve"], logs

    with (out / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == SUMMARY_FIELDS and len(table) == len(expected)
    for name in ("latency_ttft_vs_rate.png", "latency_cdf.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean lat" in result.stdout and "against FCFS" in result.stdout  # the terminal tables
