"""Where each engine's CPU goes over one `trail bench` run: stock vLLM against `trail serve`
variants, per process (API server, engine core, worker), with the run's time per output token.

Each variant is started on its own, serves one run of `trail bench` (seed 0, the given load,
through `--stock-endpoint` / `--trail-endpoint`), and is stopped; each process's CPU seconds
are read before and after the run. Name a variant more than once to repeat it: the runs are
made in the order given, so alternate them (`stock,trail,stock,trail`) to see the machine's
drift beside any difference.

    .venv/bin/python benchmarks/engine_cpu.py --variants stock,trail,no-predictor,stock \\
        --load 1.2 --capacity 176.3 --output /tmp/engine-cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from trail_scheduler.bench.servers import start_stock_vllm, start_trail_serve

# trail serve as `trail bench` runs its probe-free entries (trail-fcfs: the capture on, no probe).
TRAIL_ARGS = ("--probe", "none", "--probe-layer", "22")
VARIANTS = {
    "stock": None,
    "trail": TRAIL_ARGS,
    "no-predictor": (*TRAIL_ARGS, "--prompt-predictor", "none"),
}


def cpu_seconds(root: psutil.Process) -> dict[str, float]:
    """User + system CPU seconds of ``root`` and its descendants, by process name and pid."""
    seconds = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            seconds[f"{process.name()} ({process.pid})"] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return seconds


def run_variant(name: str, index: int, args: argparse.Namespace) -> dict:
    engine = ("--max-num-seqs", str(args.max_num_seqs))
    extra = VARIANTS[name]
    if extra is None:
        server = start_stock_vllm(args.output, *engine)
    else:
        server = start_trail_serve(args.output, *extra, *engine)
    try:
        root = psutil.Process(server.process.pid)
        out = args.output / f"{index}-{name}"
        if extra is None:
            endpoint = ["--policies", "fcfs", "--stock-endpoint", server.base]
        else:
            token = args.output / "admin-token"
            token.write_text(server.token)
            endpoint = ["--policies", "trail-fcfs", "--trail-endpoint", server.base, "--admin-endpoint", server.admin]
            endpoint += ["--admin-token-file", str(token)]
        trail = str(Path(sys.executable).with_name("trail"))
        before = cpu_seconds(root)
        with (args.output / f"{index}-{name}.log").open("w") as log:
            subprocess.run(
                [trail, "bench", "--loads", args.load, "--seeds", "0", "--capacity", str(args.capacity)]
                + ["--c-sweep", "", "--max-num-seqs", str(args.max_num_seqs), *endpoint, "--output", str(out)],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        after = cpu_seconds(root)
    finally:
        server.stop()
    row = next(csv.DictReader((out / "summary.csv").open()))
    requests = json.loads((out / "report.json").read_text())["requests"]
    per_token = [
        (r["finished"] - r["first_token"]) / (r["output_tokens"] - 1) for r in requests if r["output_tokens"] > 20
    ]
    return {
        "variant": name,
        "mean_latency_s": float(row["mean_latency_s"]),
        "output_tok_s": float(row["output_throughput_tok_s"]),
        "median_ms_per_output_token": 1000 * statistics.median(per_token),
        "cpu_seconds": {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()},
        "duration_s": float(row["duration_s"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="stock,trail,no-predictor,stock", help=f"from {', '.join(VARIANTS)}")
    parser.add_argument("--load", default="1.2", help="a share of --capacity, or 'burst'")
    parser.add_argument("--capacity", type=float, default=176.3, help="output tokens/s (see trail bench)")
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--output", type=Path, default=Path("engine-cpu"))
    args = parser.parse_args()
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}; expected some of {', '.join(VARIANTS)}")
    args.output.mkdir(parents=True, exist_ok=True)
    results = []
    for index, name in enumerate(names):
        started = time.monotonic()
        result = run_variant(name, index, args)
        results.append(result)
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_seconds"].items() if v >= 0.5)
        print(
            f"{name}: {result['median_ms_per_output_token']:.1f} ms per output token, "
            f"{result['output_tok_s']:.1f} tok/s, mean latency {result['mean_latency_s']:.2f} s; "
            f"CPU s: {cpu} ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    (args.output / "engine_cpu.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
