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
    "seed",
    "arrival_rate_per_s",
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
    "served_as_profiled",
    "load_avg_1m",
)


def rate_label(rate: float | None) -> str:
    return "burst" if rate is None else f"{rate:g}"


def saturated_throughput(records: Sequence[RequestRecord], slots: int) -> float | None:
    """Output tokens/s while the engine had at least ``slots`` requests to run: the sustained
    rate of a burst, its drain (fewer requests left than batch slots) left out. Requests still
    running at that moment count pro rata between their first token and their finish (decoding
    is about linear in time). None when the burst never filled the slots."""
    done = [r for r in records if r.ok]
    if len(done) <= slots:
        return None
    cut = sorted(r.finished for r in done)[len(done) - slots]  # from here on fewer than `slots` remain
    start = min(r.sent for r in done)
    tokens = 0.0
    for r in done:
        if r.finished <= cut:
            tokens += r.output_tokens
        elif r.first_token < cut:
            tokens += r.output_tokens * (cut - r.first_token) / (r.finished - r.first_token)
    return tokens / (cut - start) if cut > start else None


def summarise(
    policy: str,
    rate: float | None,
    records: Sequence[RequestRecord],
    duration: float,
    preemptions: float,
    recomputed_tokens: float,
    label: str | None = None,
    seed: int = 0,
) -> dict:
    """One run's row; ``label`` names its load (default: the rate's own label)."""
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
        "rate": label or rate_label(rate),
        "seed": seed,
        "arrival_rate_per_s": rate,
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
        # Share of the completed requests whose served text was their profiled text: below 1.0
        # the predictors read answers other than the ones whose lengths are scored.
        "served_as_profiled": served_as_profiled(done),
        "load_avg_1m": None,  # filled in by the runner
    }


def served_as_profiled(done: Sequence[RequestRecord]) -> float:
    checked = [r.matches_profile for r in done if r.matches_profile is not None]
    return sum(checked) / len(checked) if checked else math.nan


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
    return math.inf if label == "burst" else float(label.removesuffix("x"))


def _by_policy_and_load(summary: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The runs of each (policy, load), one per seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in summary:
        groups.setdefault((row["policy"], row["rate"]), []).append(row)
    return groups


def _mean_over_seeds(summary: list[dict]) -> list[dict]:
    """One row per (policy, load): mean latency and TTFT averaged over the seeds run (for the plot)."""
    keys = ("mean_latency_s", "mean_ttft_s")
    return [
        {"policy": policy, "rate": rate, **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}
        for (policy, rate), rows in _by_policy_and_load(summary).items()
    ]


def plot(out: Path, report: dict) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _mean_over_seeds(report["summary"])
    policies = list(dict.fromkeys(r["policy"] for r in summary))
    labels = sorted({r["rate"] for r in summary}, key=_rate_value)
    relative = any(label.endswith("x") for label in labels)
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
        axis.set_xlabel("load (share of capacity)" if relative else "arrival rate (requests/s)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")  # TTFT spans orders of magnitude between policies
    axes[0].legend(fontsize=8)
    seeds = sorted({r["seed"] for r in report["summary"]})
    fig.suptitle(report["title"] + (f" (mean of seeds {seeds} where run)" if len(seeds) > 1 else ""), fontsize=9)
    fig.tight_layout()
    paths["latency_png"] = out / "latency_ttft_vs_rate.png"
    fig.savefig(paths["latency_png"], dpi=90)
    plt.close(fig)

    highest = labels[-1]
    first_seed = min(r["seed"] for r in report["summary"])
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for policy in policies:
        latencies = sorted(
            r["finished"] - r["sent"]
            for r in report["requests"]
            if r["policy"] == policy
            and r["rate"] == highest
            and r.get("seed", first_seed) == first_seed
            and r["error"] is None
        )
        if latencies:
            axis.step(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))], where="post", label=policy)
    axis.set_xlabel("latency (s)")
    axis.set_ylabel("fraction of requests")
    axis.set_title(f"latency CDF at {highest}, seed {first_seed}")
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
        ("load", "rate", str),
        ("seed", "seed", str),
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
        table.add_row(*(("-" if row.get(key) is None else fmt(row[key])) for _, key, fmt in columns))
    console.print(table)
    if report.get("comparison"):
        console.print(comparison_table(report["comparison"]))
    for note in report.get("notes", []):
        console.print(f"note: {note}")


MIN_HEADROOM = 0.1  # the oracle must beat FCFS's mean latency by this much for a comparison to mean much


def headroom(summary: list[dict], rate: str, seed: int = 0) -> float | None:
    """TRAIL+'s mean latency over FCFS's at ``rate``: how much any length-aware order can gain
    on this workload (None until both have run)."""
    means = {
        row["policy"]: row["mean_latency_s"] for row in summary if row["rate"] == rate and row.get("seed", 0) == seed
    }
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


# What the headline is judged by: each policy against FCFS on the same requests (same load and
# seed), then the mean and range over the seeds.
COMPARED = {
    "mean_latency": "mean_latency_s",
    "mean_ttft": "mean_ttft_s",
    "p99_latency": "p99_latency_s",
    "throughput": "output_throughput_tok_s",
}


def compare(summary: list[dict]) -> list[dict]:
    """Per policy and load: ratios to FCFS (mean, min, max over seeds), the share of the oracle's
    gain over FCFS that the policy reached, preemptions and recomputed tokens per run, and the
    share of preemptions within a victim's first 16 tokens."""
    import numpy as np

    by_run = {(row["policy"], row["rate"], row.get("seed", 0)): row for row in summary}
    rows = []
    for (policy, rate), runs in _by_policy_and_load(summary).items():
        if policy == "fcfs":
            continue
        seeds = [run.get("seed", 0) for run in runs]
        ratios: dict[str, list[float]] = {name: [] for name in COMPARED}
        gains: list[float] = []
        for seed in seeds:
            fcfs, mine = by_run.get(("fcfs", rate, seed)), by_run[(policy, rate, seed)]
            if fcfs is None:
                continue
            for name, key in COMPARED.items():
                if fcfs[key] and math.isfinite(fcfs[key]) and math.isfinite(mine[key]):
                    ratios[name].append(mine[key] / fcfs[key])
            oracle = by_run.get(("trail+", rate, seed))
            if oracle is not None and fcfs["mean_latency_s"] > oracle["mean_latency_s"]:
                gain = fcfs["mean_latency_s"] - oracle["mean_latency_s"]
                gains.append((fcfs["mean_latency_s"] - mine["mean_latency_s"]) / gain)
        if not any(ratios.values()):
            continue
        row = {"policy": policy, "rate": rate, "seeds": len(seeds)}
        for name, values in ratios.items():
            row[name] = [float(np.mean(values)), min(values), max(values)] if values else None
        row["oracle_gain_share"] = [float(np.mean(gains)), min(gains), max(gains)] if gains else None
        row["preemptions"] = float(np.mean([by_run[(policy, rate, s)]["preemptions"] for s in seeds]))
        row["recomputed_tokens"] = float(np.mean([by_run[(policy, rate, s)]["recomputed_tokens"] for s in seeds]))
        # Of trail serve's preemptions, the share within a victim's first 16 tokens (churn).
        early = [v for s in seeds if (v := by_run[(policy, rate, s)].get("preempted_within_16_tokens")) is not None]
        row["preempted_within_16_tokens"] = float(np.mean(early)) if early else None
        rows.append(row)
    return sorted(rows, key=lambda r: (_rate_value(r["rate"]), r["policy"]))


def _spread(value: list[float] | None, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "-"
    mean, low, high = value
    return fmt.format(mean) if low == high else f"{fmt.format(mean)} ({fmt.format(low)}–{fmt.format(high)})"


def comparison_table(comparison: list[dict]):
    from rich.table import Table

    table = Table(title="against FCFS on the same requests: mean over seeds (min–max)")
    for header in ("policy", "load", "seeds", "mean lat", "TTFT", "p99", "tok/s", "oracle gain", "preempt", "recomp"):
        table.add_column(header, justify="left" if header in ("policy", "load") else "right")
    table.add_column("≤16 tok", justify="right")  # the share of preemptions within a victim's first 16 tokens
    for row in comparison:
        table.add_row(
            row["policy"],
            row["rate"],
            str(row["seeds"]),
            *(_spread(row[name]) for name in COMPARED),
            _spread(row["oracle_gain_share"], "{:.0%}"),
            f"{row['preemptions']:.0f}",
            f"{row['recomputed_tokens']:.0f}",
            "-" if row["preempted_within_16_tokens"] is None else f"{row['preempted_within_16_tokens']:.0%}",
        )
    return table
