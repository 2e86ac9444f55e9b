"""What the predicted-backlog signal is worth to a router: two replicas of ``trail serve``
behind round robin, behind the fewest requests in flight, and behind the least predicted
drain time, on the same Poisson stream.

Each replica is ``trail serve`` with the shipped predictors at its defaults, pinned to a
core of its own (``VLLM_CPU_OMP_THREADS_BIND``), as the bench starts it. The prompts are
the bench's (the ShareGPT benchmark split at its natural mix, drawn by seed), answered
greedily with their profiled lengths as the bench serves them. The pair's capacity is
measured first (a burst in turn over both, summed per replica as the bench measures one
engine), then every rule serves each seed's stream at ``--load`` times it, the rules'
order rotated per seed, both prefix caches emptied before each run.

    .venv/bin/python benchmarks/routing.py --requests 64 --load 1.0 --seeds 0,1 --out docs/benchmarks/routing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trail_scheduler.assets import prepare_bundled_model
from trail_scheduler.bench.config import engine_args
from trail_scheduler.bench.engines import empty_prefix_cache, warm_up
from trail_scheduler.bench.loadgen import run_load
from trail_scheduler.bench.report import saturated_throughput, summarise
from trail_scheduler.bench.routing import RULES, Router
from trail_scheduler.bench.servers import start_trail_serve
from trail_scheduler.bench.workload import (
    DEFAULT_OUTPUT_CAP,
    GREEDY,
    Load,
    build_requests,
    chat_token_counter,
    length_summary,
    load_prompts,
    profile_answers,
    sample_prompts,
)
from trail_scheduler.predictors import SHIPPED_PROBE, SHIPPED_PROMPT_PREDICTOR

REPLICAS = 2


def start_replicas(logs: Path, max_num_seqs: int, stack: ExitStack) -> list:
    """The replicas, each on one core; the engine's arguments are the bench's."""
    servers = []
    for core in range(REPLICAS):
        server = start_trail_serve(
            logs,
            *("--probe", str(SHIPPED_PROBE), "--prompt-predictor", str(SHIPPED_PROMPT_PREDICTOR)),
            *engine_args(max_num_seqs, GREEDY),
            env={"VLLM_CPU_OMP_THREADS_BIND": str(core)},
        )
        stack.callback(server.stop)
        servers.append(server)
    return servers


def routed(rule: str, servers, model: str, requests, time_limit: float):
    async def run():
        async with Router(rule, servers) as router:
            return await run_load(router, model, requests, GREEDY, time_limit)

    return asyncio.run(run())


def pair_capacity(records, servers, max_num_seqs: int) -> float:
    """Output tokens/s of the pair: each replica's saturated throughput in the burst, summed."""
    rates = [saturated_throughput([r for r in records if r.served_by == s.base], max_num_seqs) for s in servers]
    if None in rates:
        raise SystemExit(f"the capacity burst never filled a replica's {max_num_seqs} batch slots: {rates}")
    return sum(rates)


def row(rule: str, seed: int, rate: float, records, duration: float, servers) -> dict:
    summary = summarise(rule, rate, records, duration, preemptions=0, recomputed_tokens=0, seed=seed)
    done = [r for r in records if r.ok]
    summary["requests_per_replica"] = [sum(r.served_by == s.base for r in records) for s in servers]
    summary["output_tokens_per_replica"] = [
        sum(r.output_tokens for r in done if r.served_by == s.base) for s in servers
    ]
    return summary


RATIO_FIELDS = ("mean_latency_s", "p99_latency_s", "mean_ttft_s", "output_throughput_tok_s")


def ratios_to_round_robin(runs: dict[tuple[str, int], dict], rules: list[str], seeds: list[int]) -> dict:
    """Each rule's figures over round robin's on the same seed's stream."""
    return {
        rule: {
            str(seed): {field: runs[rule, seed][field] / runs["round-robin", seed][field] for field in RATIO_FIELDS}
            for seed in seeds
        }
        for rule in rules
    }


def plot(out: Path, runs: dict[tuple[str, int], dict], rules: list[str], seeds: list[int]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (("mean_latency_s", "mean latency (s)"), ("p99_latency_s", "p99 latency (s)"), ("mean_ttft_s", "TTFT (s)"))
    for ax, (field, title) in zip(axes, panels, strict=True):
        width = 0.8 / len(seeds)
        for k, seed in enumerate(seeds):
            values = [runs[rule, seed][field] for rule in rules]
            ax.bar([i + k * width for i in range(len(rules))], values, width, label=f"seed {seed}")
        ax.set_xticks([i + width * (len(seeds) - 1) / 2 for i in range(len(rules))], rules, fontsize=8)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("two trail serve replicas: the router's rule")
    fig.tight_layout()
    path = out / "routing.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per run (default 64)")
    parser.add_argument("--load", type=float, default=1.0, help="share of the pair's measured capacity (default 1.0)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated prompt/arrival seeds (default 0,1)")
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    parser.add_argument("--max-num-seqs", type=int, default=8, help="batch slots per replica (default 8)")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds per run (default 1800)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.json and routing.png")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rules = [r.strip() for r in args.rules.split(",")]
    if unknown := set(rules) - set(RULES):
        parser.error(f"unknown rules {sorted(unknown)}; known: {', '.join(RULES)}")
    load = Load(share=args.load)

    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="routing-logs-", dir=args.out))
    count_tokens = chat_token_counter(prepare_bundled_model())
    pool = load_prompts()
    samples = {s: sample_prompts(pool, args.requests, s, count_tokens=count_tokens) for s in seeds}
    report: dict = {
        "command": "python benchmarks/routing.py "
        + f"--requests {args.requests} --load {args.load:g} --seeds {args.seeds} --rules {','.join(rules)} "
        + f"--max-num-seqs {args.max_num_seqs} --out {args.out}",
        "replicas": REPLICAS,
        "rules": rules,
        "runs": [],
    }
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with ExitStack() as stack, Progress(*columns, console=console) as progress:
        starting = progress.add_task("starting two trail serve replicas", total=None)
        servers = start_replicas(logs, args.max_num_seqs, stack)
        model = servers[0].served_model()
        progress.remove_task(starting)
        to_profile = list({p.id: p for sample in samples.values() for p in sample}.values())
        profiling = progress.add_task("profiling the answers (greedy)", total=len(to_profile))
        answers = profile_answers(
            servers[0].base,
            model,
            to_profile,
            DEFAULT_OUTPUT_CAP,
            GREEDY,
            progress=lambda: progress.advance(profiling),
        )
        progress.remove_task(profiling)
        lengths = {i: a.tokens for i, a in answers.items()}
        report["lengths"] = {s: length_summary([lengths[p.id] for p in samples[s]], DEFAULT_OUTPUT_CAP) for s in seeds}
        for server in servers:
            warm_up(server, model, samples[seeds[0]], args.max_num_seqs, GREEDY)
        notes: list[str] = []

        burst = build_requests(samples[seeds[0]], answers, None, seeds[0])
        measuring = progress.add_task("measuring the pair's capacity (a burst, in turn)", total=None)
        for server in servers:
            empty_prefix_cache(server, notes)
        records, _ = routed("round-robin", servers, model, burst, args.time_limit)
        capacity = pair_capacity(records, servers, args.max_num_seqs)
        progress.remove_task(measuring)
        report["capacity_output_tok_s"] = capacity
        console.print(f"the pair's capacity: {capacity:.1f} output tokens/s")

        runs = progress.add_task("runs", total=len(seeds) * len(rules))
        for n, seed in enumerate(seeds):
            sample = samples[seed]
            rate = load.requests_per_second(capacity, statistics.mean(lengths[p.id] for p in sample))
            requests = build_requests(sample, answers, rate, seed)
            for rule in rules[n % len(rules) :] + rules[: n % len(rules)]:
                for server in servers:
                    empty_prefix_cache(server, notes)
                progress.update(runs, description=f"{rule}, seed {seed}")
                records, duration = routed(rule, servers, model, requests, args.time_limit)
                result = row(rule, seed, rate, records, duration, servers)
                result["load_avg_1m"] = os.getloadavg()[0]
                report["runs"].append(result)
                console.print(
                    f"{rule}, seed {seed}: mean {result['mean_latency_s']:.1f} s, p99 {result['p99_latency_s']:.1f} s, "
                    f"TTFT {result['mean_ttft_s']:.2f} s, per replica {result['requests_per_replica']}"
                )
                progress.advance(runs)
        report["notes"] = notes

    runs = {(r["policy"], r["seed"]): r for r in report["runs"]}
    if "round-robin" in rules:
        report["ratios_to_round_robin"] = ratios_to_round_robin(runs, rules, seeds)
        console.print(json.dumps(report["ratios_to_round_robin"], indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(args.out, runs, rules, seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
