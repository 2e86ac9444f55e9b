"""TRAIL's overhead (issue 3): engine step time and output throughput, stock vs TRAIL,
and the TRAIL core's decision time.

Engine part: the same prompts, each forced to the same output length (``ignore_eos``),
sent all at once to a batch large enough to hold them (no queueing, no preemption), so
the runs differ only in the scheduler and the model runner:

- ``stock``: stock vLLM's OpenAI server and scheduler;
- ``trail-fcfs``: ``trail serve`` (hidden-state capture + probe every token), FCFS order;
- ``trail``: the same engine, policy ``trail`` (c = 0.8): capture + probe + policy.

Step time is vLLM's own inter-token latency (``vllm:inter_token_latency_seconds``,
sum/count over the run): with every request decoding in one batch, one step apart.
Each configuration runs one warm-up burst, then ``--repeats`` measured ones.

Decision part (pure Python, no engine): ``Policy.decide`` with 1,000 waiting and 256
running requests, timed over many calls.

    .venv/bin/python benchmarks/overhead.py [--requests 16] [--tokens 128] [--repeats 2] [--skip-engine]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trail_scheduler.core.policy import Policy, Room, RunningRequest, SchedulerSettings, WaitingRequest


def decision_inputs(waiting: int, running: int, seed: int = 0):
    """A loaded engine: a full batch (no free slot) and a long queue of mixed predictions."""
    rng = random.Random(seed)
    now = 1000.0
    queue = [
        WaitingRequest(f"w{i}", now - rng.uniform(0, 60), rng.uniform(1, 512), rng.randint(1, 40))
        for i in range(waiting)
    ]
    batch = []
    for i in range(running):
        initial = rng.uniform(1, 512)
        generated = rng.randint(0, int(initial))
        batch.append(
            RunningRequest(
                f"r{i}",
                now - rng.uniform(0, 60),
                generated,
                initial,
                max(0.0, initial - generated),
                rng.randint(1, 60),
                rng.randint(0, 2),
            )
        )
    return queue, batch, Room(free_slots=0, free_blocks=64), now


def time_decide(waiting: int = 1000, running: int = 256, calls: int = 300) -> dict:
    queue, batch, room, now = decision_inputs(waiting, running)
    results = {}
    for name, settings in (
        ("trail", SchedulerSettings(policy="trail", c=0.8)),
        ("trail+guard", SchedulerSettings(policy="trail", c=0.8, max_wait_seconds=30.0)),
        ("trail c=0", SchedulerSettings(policy="trail", c=0.0)),  # nobody preemptible
        ("fcfs", SchedulerSettings(policy="fcfs")),
    ):
        policy = Policy(settings)
        for _ in range(20):  # warm-up
            decision = policy.decide(queue, batch, room, now)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            policy.decide(queue, batch, room, now)
            samples.append((time.perf_counter() - started) * 1e3)
        median, p99 = np.percentile(samples, [50, 99]).tolist()
        results[name] = {
            "median_ms": median,
            "p99_ms": p99,
            "min_ms": min(samples),
            "preemptions": len(decision.preempt),
        }
    return results


def profile_decide(waiting: int = 1000, running: int = 256, calls: int = 100) -> str:
    """Where decide() spends its time (top functions by own time)."""
    queue, batch, room, now = decision_inputs(waiting, running)
    policy = Policy(SchedulerSettings(policy="trail", c=0.8))
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        policy.decide(queue, batch, room, now)
    profiler.disable()
    out = []
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime")
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]:
        out.append(f"{tt / calls * 1e3:7.3f} ms/call own  {nc // calls:>6} calls  {Path(file).name}:{line} {func}")
    return "\n".join(out)


def _burst(server, model: str, requests, time_limit: float = 600) -> dict:
    from trail_scheduler.bench.loadgen import run_load
    from trail_scheduler.bench.servers import metric_delta
    from trail_scheduler.bench.workload import GREEDY

    itl = "vllm:inter_token_latency_seconds"
    before = server.metrics()
    records, duration = asyncio.run(run_load(server.base, model, requests, GREEDY, time_limit))
    time.sleep(1.5)
    after = server.metrics()
    failed = [r.error for r in records if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed: {failed[:3]}")
    tokens = sum(r.output_tokens for r in records)
    span = max(r.finished for r in records) - min(r.sent for r in records)
    steps = metric_delta(before, after, f"{itl}_count")
    step_time = metric_delta(before, after, f"{itl}_sum") / steps
    return {"output_tokens": tokens, "throughput_tok_s": tokens / span, "step_ms": step_time * 1e3}


def engine_overhead(requests: int, tokens: int, repeats: int, probe: Path | None) -> dict:
    from trail_scheduler.assets import prepare_bundled_model
    from trail_scheduler.bench.servers import start_stock_vllm, start_trail_serve
    from trail_scheduler.bench.workload import BenchRequest, chat_token_counter, load_prompts, sample_prompts

    prompts = sample_prompts(
        load_prompts(),
        requests,
        seed=0,
        max_prompt_tokens=512,
        count_tokens=chat_token_counter(prepare_bundled_model()),
    )
    work = [BenchRequest(p.id, p.prompt, tokens, 0.0) for p in prompts]
    engine_args = ("--max-num-seqs", str(requests))
    logs = Path(tempfile.mkdtemp(prefix="trail-overhead-"))
    results: dict = {}

    def measure(name: str, server) -> None:
        model = server.served_model()
        _burst(server, model, work)  # warm-up
        runs = [_burst(server, model, work) for _ in range(repeats)]
        results[name] = {key: statistics.mean(r[key] for r in runs) for key in ("throughput_tok_s", "step_ms")}
        results[name]["runs"] = runs
        print(
            f"{name:>10}: {results[name]['throughput_tok_s']:.1f} tok/s, step {results[name]['step_ms']:.1f} ms",
            file=sys.stderr,
        )

    stock = start_stock_vllm(logs, *engine_args)
    try:
        measure("stock", stock)
    finally:
        stock.stop()
    trail = start_trail_serve(logs, *engine_args)
    try:
        if probe is not None:
            trail.load_probe(probe)
        trail.configure(policy="fcfs")
        measure("trail-fcfs", trail)
        trail.configure(policy="trail", c=0.8, predictEvery=1)
        measure("trail", trail)
    finally:
        trail.stop()
    base = results["stock"]["throughput_tok_s"]
    for name in ("trail-fcfs", "trail"):
        results[name]["throughput_cost_pct"] = 100 * (1 - results[name]["throughput_tok_s"] / base)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per request (ignore_eos)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--probe", type=Path, help="probe to run (default: the shipped one, else an untrained one)")
    parser.add_argument("--skip-engine", action="store_true", help="only the decision time")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict = {"decide": time_decide(), "decide_profile": profile_decide()}
    print("Policy.decide, 1000 waiting + 256 running:", json.dumps(results["decide"], indent=1))
    print(results["decide_profile"])
    if not args.skip_engine:
        from trail_scheduler.predictors import SHIPPED_PROBE

        probe = args.probe or (SHIPPED_PROBE if SHIPPED_PROBE.is_file() else None)
        if probe is None:
            from trail_scheduler.bench.probes import untrained_probe

            probe = untrained_probe(Path(tempfile.mkdtemp(prefix="trail-overhead-")) / "untrained.safetensors")
        results["probe"] = str(probe)
        results["engine"] = engine_overhead(args.requests, args.tokens, args.repeats, probe)
        print(json.dumps(results["engine"], indent=1))
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
