"""Summaries of benchmark runs: per policy and rate statistics, files, plots, table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from trail_scheduler.bench.loadgen import RequestRecord

SUMMARY_FIELDS = (
    "policy",
    "rate",
    "requests",
    "completed",
    "failed",
    "mean_latency_s",
    "median_latency_s",
    "p95_latency_s",
    "p99_latency_s",
    "mean_ttft_s",
    "median_ttft_s",
    "latency_per_output_token_s",
    "output_throughput_tok_s",
    "duration_s",
    "preemptions",
    "recomputed_tokens",
    "load_avg_1m",
)


def rate_label(rate: float | None) -> str:
    return "burst" if rate is None else f"{rate:g}"


def summarise(
    policy: str,
    rate: float | None,
    records: Sequence[RequestRecord],
    duration: float,
    preemptions: float,
    recomputed_tokens: float,
) -> dict:
    import numpy as np  # here: `trail operator run` builds this command's parser without the engine stack

    done = [r for r in records if r.ok]
    latencies = [r.latency for r in done]
    ttfts = [r.ttft for r in done]
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    percentile = lambda xs, q: float(np.percentile(xs, q)) if xs else math.nan  # noqa: E731
    # Throughput over the whole run: from the first send to the last finish.
    span = (max(r.finished for r in done) - min(r.sent for r in done)) if done else math.nan
    return {
        "policy": policy,
        "rate": rate_label(rate),
        "requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "mean_latency_s": mean(latencies),
        "median_latency_s": percentile(latencies, 50),
        "p95_latency_s": percentile(latencies, 95),
        "p99_latency_s": percentile(latencies, 99),
        "mean_ttft_s": mean(ttfts),
        "median_ttft_s": percentile(ttfts, 50),
        "latency_per_output_token_s": mean([r.latency / max(1, r.output_tokens) for r in done]),
        "output_throughput_tok_s": sum(r.output_tokens for r in done) / span if done and span > 0 else math.nan,
        "duration_s": duration,
        "preemptions": preemptions,
        "recomputed_tokens": recomputed_tokens,
        "load_avg_1m": None,  # filled in by the runner
    }


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_partial(out: Path, report: dict) -> Path:
    """The report so far (no plots), replaced atomically after every run."""
    path = out / "report.partial.json"
    path.with_suffix(".tmp").write_text(json.dumps(_json_safe(report), indent=1))
    path.with_suffix(".tmp").replace(path)
    return path


def write_report(out: Path, report: dict) -> dict[str, Path]:
    """report.json (everything, per-request records included), summary.csv, and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "summary.csv"}
    paths["json"].write_text(json.dumps(_json_safe(report), indent=1))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for row in report["summary"]:
            writer.writerow({k: row[k] for k in SUMMARY_FIELDS})
    paths.update(plot(out, report))
    (out / "report.partial.json").unlink(missing_ok=True)
    return paths


def _rate_value(label: str) -> float:
    return math.inf if label == "burst" else float(label)


def plot(out: Path, report: dict) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]
    policies = list(dict.fromkeys(r["policy"] for r in summary))
    labels = sorted({r["rate"] for r in summary}, key=_rate_value)
    positions = {label: i for i, label in enumerate(labels)}
    paths: dict[str, Path] = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in policies:
        rows = sorted((r for r in summary if r["policy"] == policy), key=lambda r: _rate_value(r["rate"]))
        xs = [positions[r["rate"]] for r in rows]
        style = {"marker": "o", "linewidth": 2.2 if policy in ("fcfs", "trail", "trail+") else 1.2}
        axes[0].plot(xs, [r["mean_latency_s"] for r in rows], label=policy, **style)
        axes[1].plot(xs, [r["mean_ttft_s"] for r in rows], label=policy, **style)
    for axis, title in zip(axes, ("mean latency (s)", "mean TTFT (s)")):
        axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel("arrival rate (requests/s)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")  # TTFT spans orders of magnitude between policies
    axes[0].legend(fontsize=8)
    fig.suptitle(report["title"], fontsize=9)
    fig.tight_layout()
    paths["latency_png"] = out / "latency_ttft_vs_rate.png"
    fig.savefig(paths["latency_png"], dpi=90)
    plt.close(fig)

    highest = labels[-1]
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for policy in policies:
        latencies = sorted(
            r["finished"] - r["sent"]
            for r in report["requests"]
            if r["policy"] == policy and r["rate"] == highest and r["error"] is None
        )
        if latencies:
            axis.step(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], where="post", label=policy)
    axis.set_xlabel("latency (s)")
    axis.set_ylabel("fraction of requests")
    axis.set_title(f"latency CDF at rate {highest}")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    fig.tight_layout()
    paths["cdf_png"] = out / "latency_cdf.png"
    fig.savefig(paths["cdf_png"], dpi=90)
    plt.close(fig)
    return paths


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=report["title"], show_lines=False)
    columns = [
        ("policy", "policy", str),
        ("rate", "rate", str),
        ("done", "completed", str),
        ("mean lat s", "mean_latency_s", "{:.2f}".format),
        ("p50", "median_latency_s", "{:.2f}".format),
        ("p95", "p95_latency_s", "{:.2f}".format),
        ("p99", "p99_latency_s", "{:.2f}".format),
        ("TTFT s", "mean_ttft_s", "{:.2f}".format),
        ("s/tok", "latency_per_output_token_s", "{:.3f}".format),
        ("tok/s", "output_throughput_tok_s", "{:.1f}".format),
        ("preempt", "preemptions", "{:.0f}".format),
        ("recomp tok", "recomputed_tokens", "{:.0f}".format),
    ]
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("policy", "rate") else "right")
    for row in report["summary"]:
        table.add_row(*(("-" if row[key] is None else fmt(row[key])) for _, key, fmt in columns))
    console.print(table)
    for note in report.get("notes", []):
        console.print(f"note: {note}")


MIN_HEADROOM = 0.1  # the oracle must beat FCFS's mean latency by this much for a comparison to mean much


def headroom(summary: list[dict], rate: str) -> float | None:
    """TRAIL+'s mean latency over FCFS's at ``rate``: how much any length-aware order can gain
    on this workload (None until both have run)."""
    means = {row["policy"]: row["mean_latency_s"] for row in summary if row["rate"] == rate}
    if "fcfs" not in means or "trail+" not in means or not means["fcfs"]:
        return None
    return means["trail+"] / means["fcfs"]


def headroom_message(ratio: float, rate: str) -> tuple[str, bool]:
    """The line to print, and whether it is a warning (too little headroom)."""
    line = f"oracle headroom @ {rate}: TRAIL+ mean latency {ratio:.2f}x FCFS's"
    if ratio > 1 - MIN_HEADROOM:
        return (
            f"{line}. Warning: even the true lengths gain less than {MIN_HEADROOM:.0%} over FCFS here, so this "
            "workload leaves a length-aware scheduler little to reorder and policy differences mean little "
            "(see the length distribution; try --short-requests, a higher load, or prompts whose answers vary more)",
            True,
        )
    return line, False
