"""What TRAIL's per-step probe work costs on a GPU at Llama-3-8B-Instruct shapes (H = 4096, K = 10).

Mirrors ``_trail_read_evidence`` in ``scheduler/trail_scheduler/vllm/runner.py``, op for op, without vLLM:

- (a) decode step: ``torch.tensor(rows, device=...)`` for the index, ``hidden.index_select(0, index).float()``,
  ``unbind``/``stack``, ``probe.probabilities(rows)``; from a bf16 ``hidden`` of n rows (a decode-only step) and of
  8,192 rows (a mixed prefill+decode step). No host copy of the result;
- (b) the same plus ``.cpu().numpy().astype(float64)`` of the ``[n, K]`` result: the sync the runner does;
- (c) one prefill's prompt mean: ``hidden[a:b].float().sum(dim=0)`` over 512 and 2,048 prompt rows, over the count;
- (d) for scale, one bf16 matmul ``[n, 4096] x [4096, 14336]`` (one of Llama-3-8B's MLP projections, 32 layers x 3
  per forward).

The GPU machine has PyTorch but neither this package nor vLLM, so ``trail_scheduler/probe/model.py`` (imports only
torch) is loaded by file path: the timed ``LengthProbe`` is exactly the module the product runs, in float32 on the
device as ``trail_set_probe`` puts it, under ``torch.inference_mode``.

Each case is timed two ways on CUDA (CUDA events; warm-up, then median and p90):

- *step*: from an idle stream, events around the whole call: host launches plus kernels, the latency the engine's
  step sees when nothing is queued ahead;
- *GPU-only*: the same work queued behind ``torch.cuda._sleep`` so every kernel is enqueued before the device reaches
  it: the device time it adds behind the forward pass (index prebuilt: building it may sync, see below).

(e) *host blocked while the GPU is busy*: the step's evidence path run right after ``torch.cuda._sleep`` (standing
for the forward pass still on the GPU), timed on the host with ``time.perf_counter``: the time the engine's host
thread cannot schedule the next step. ``old``: the runner before async support (pageable index copy,
``.cpu().numpy()``); ``new``: the runner now (index through pinned memory, result copied to pinned memory with
``non_blocking=True`` and an event, resolved when vLLM asks for the step's output).

``index_h2d_syncs`` in the JSON says whether ``torch.tensor(list, device=cuda)`` waited for the queued work (a blocking
host-to-device copy): if so, the runner's index build already waits for the forward pass before the probe starts.

    python3 benchmarks/gpu_probe.py [--output gpu_probe.json]      # on a CUDA machine
    python3 benchmarks/gpu_probe.py --device cpu --quick            # smoke test (time.perf_counter, few iterations)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import torch

try:
    import numpy  # noqa: F401  (the runner's ``.numpy()``; without it, (b) times ``.cpu().double()``)

    HAVE_NUMPY = True
except ImportError:
    HAVE_NUMPY = False

HIDDEN = 4096
BINS = 10
MLP_OUT = 14336  # Llama-3-8B intermediate size
MIXED_ROWS = 8192
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PROMPTS = (512, 2048)
SLEEP_CYCLES = 5_000_000  # ~2.5 ms at H100/H200 clocks: longer than any case's host enqueue


def load_probe_class():
    """``LengthProbe`` from the repository file itself (no trail_scheduler install needed)."""
    path = Path(__file__).resolve().parents[1] / "scheduler" / "trail_scheduler" / "probe" / "model.py"
    spec = importlib.util.spec_from_file_location("trail_probe_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LengthProbe


class Timer:
    """Median/p90 microseconds of a callable: CUDA events on a GPU, ``time.perf_counter`` on the CPU."""

    def __init__(self, device: torch.device, warmup: int, iters: int) -> None:
        self.device, self.warmup, self.iters = device, warmup, iters
        self.late = 0  # GPU-only runs where the sleep ended before the host finished enqueueing

    def __call__(self, fn, gpu_only: bool = False) -> dict | None:
        if gpu_only and self.device.type != "cuda":
            return None
        samples = []
        for _ in range(self.warmup + self.iters):
            samples.append(self._gpu_only(fn) if gpu_only else self._step(fn))
        deciles = statistics.quantiles(samples[self.warmup :], n=10, method="inclusive")  # numpy's linear percentiles
        return {"median_us": deciles[4], "p90_us": deciles[8]}

    def _step(self, fn) -> float:
        if self.device.type != "cuda":
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e6
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3

    def _gpu_only(self, fn) -> float:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
        self.late += start.query()  # the device already reached the work: host enqueue was exposed
        end.synchronize()
        return start.elapsed_time(end) * 1e3


def index_h2d_syncs(device: torch.device) -> bool | None:
    """Whether building the index from a Python list waits for work already queued on the stream."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    marker = torch.cuda.Event()
    marker.record()
    torch.tensor([0, 1, 2], device=device)
    waited = marker.query()
    torch.cuda.synchronize()
    return bool(waited)


def run(device: torch.device, warmup: int, iters: int, batches: tuple[int, ...], mlp_out: int = MLP_OUT) -> dict:
    torch.manual_seed(0)
    probe = load_probe_class()(HIDDEN, BINS).to(device, dtype=torch.float32).eval()
    timer = Timer(device, warmup, iters)
    bf16 = torch.bfloat16
    mixed = torch.randn(MIXED_ROWS, HIDDEN, device=device, dtype=bf16)
    weight = torch.randn(HIDDEN, mlp_out, device=device, dtype=bf16)

    def step(hidden, rows, index=None, host=False):
        index = torch.tensor(rows, device=device) if index is None else index
        probs = probe.probabilities(torch.stack(hidden.index_select(0, index).float().unbind(0)))
        if not host:
            return probs
        return probs.cpu().numpy().astype("float64") if HAVE_NUMPY else probs.cpu().double()

    def evidence_old(hidden, rows):
        return step(hidden, rows, host=True)

    def evidence_new(hidden, rows):
        index = torch.tensor(rows, dtype=torch.long).pin_memory().to(device, non_blocking=True)
        probs = probe.probabilities(torch.stack(hidden.index_select(0, index).float().unbind(0)))
        host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True).copy_(probs, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready

    def host_blocked(fn) -> dict | None:
        """Host microseconds spent in ``fn`` while the GPU still runs earlier work."""
        if device.type != "cuda":
            return None
        samples = []
        for _ in range(warmup + iters):
            torch.cuda.synchronize()
            torch.cuda._sleep(SLEEP_CYCLES)
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e6)
            torch.cuda.synchronize()
        deciles = statistics.quantiles(samples[warmup:], n=10, method="inclusive")
        return {"median_us": deciles[4], "p90_us": deciles[8]}

    def batch(n: int) -> dict:
        decode = torch.randn(n, HIDDEN, device=device, dtype=bf16)
        rows = list(range(n))
        mixed_rows = sorted(torch.randperm(MIXED_ROWS)[:n].tolist())  # the last rows of n spans
        index = torch.tensor(rows, device=device)
        x = torch.randn(n, HIDDEN, device=device, dtype=bf16)
        return {
            "n": n,
            "a_step": timer(lambda: step(decode, rows)),
            "a_mixed_step": timer(lambda: step(mixed, mixed_rows)),
            "a_gpu_only": timer(lambda: step(decode, rows, index), gpu_only=True),
            "b_step_with_cpu_copy": timer(lambda: step(decode, rows, host=True)),
            "d_mlp_matmul_step": timer(lambda: x @ weight),
            "d_mlp_matmul_gpu_only": timer(lambda: x @ weight, gpu_only=True),
            "e_host_blocked_old": host_blocked(lambda: evidence_old(decode, rows)),
            "e_host_blocked_new": host_blocked(lambda: evidence_new(decode, rows)),
        }

    def prompt_mean(count: int) -> dict:
        def mean():
            return (mixed[:count].float().sum(dim=0) + 0) / count  # + 0: the runner's first running total

        return {"prompt_rows": count, "step": timer(mean), "gpu_only": timer(mean, gpu_only=True)}

    with torch.inference_mode():
        syncs = index_h2d_syncs(device)
        results = [batch(n) for n in batches]
        prefill = [prompt_mean(count) for count in PROMPTS]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hidden_size": HIDDEN,
        "bins": BINS,
        "mlp_out": mlp_out,
        "mixed_rows": MIXED_ROWS,
        "warmup": warmup,
        "iterations": iters,
        "numpy": HAVE_NUMPY,
        "index_h2d_syncs": syncs,
        "gpu_only_late_enqueues": timer.late,
        "decode": results,
        "prefill": prefill,
    }


def cell(stat: dict | None) -> str:
    return "—" if stat is None else f"{stat['median_us']:.1f} / {stat['p90_us']:.1f}"


def ratio(num: dict | None, den: dict | None) -> str:
    return "—" if num is None or den is None else f"{num['median_us'] / den['median_us']:.2f}"


def markdown(report: dict) -> str:
    lines = [
        (
            f"device: {report['device']}; torch {report['torch']}; CUDA {report['cuda']}; "
            f"{report['iterations']} iterations after {report['warmup']} warm-up; cells: median / p90 µs"
        ),
        "",
        (
            "| n | (a) probe step | (a) in an 8,192-row step | (b) (a) + `.cpu()` | (a) GPU-only "
            "| (d) MLP matmul step | (d) GPU-only | a/d step | a/d GPU-only |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["decode"]:
        lines.append(
            f"| {r['n']} | {cell(r['a_step'])} | {cell(r['a_mixed_step'])} | {cell(r['b_step_with_cpu_copy'])} "
            f"| {cell(r['a_gpu_only'])} | {cell(r['d_mlp_matmul_step'])} | {cell(r['d_mlp_matmul_gpu_only'])} "
            f"| {ratio(r['a_step'], r['d_mlp_matmul_step'])} | {ratio(r['a_gpu_only'], r['d_mlp_matmul_gpu_only'])} |"
        )
    lines += ["", "| n | (e) host blocked, old runner | (e) host blocked, new runner |", "|---:|---:|---:|"]
    lines += [
        f"| {r['n']} | {cell(r['e_host_blocked_old'])} | {cell(r['e_host_blocked_new'])} |" for r in report["decode"]
    ]
    lines += ["", "| (c) prompt rows | prompt mean step | GPU-only |", "|---:|---:|---:|"]
    lines += [f"| {p['prompt_rows']} | {cell(p['step'])} | {cell(p['gpu_only'])} |" for p in report["prefill"]]
    lines += [
        "",
        (
            f"index build from a list waits for queued work: {report['index_h2d_syncs']}; "
            f"GPU-only samples with exposed host enqueue: {report['gpu_only_late_enqueues']}"
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: few iterations and batch sizes, a narrow (d)")
    default_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(".")
    parser.add_argument("--output", type=Path, default=default_dir / "gpu_probe.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        report = run(device, warmup=1, iters=3, batches=(1, 16), mlp_out=256)  # bf16 matmuls crawl on CPUs
    else:
        report = run(device, warmup=20, iters=200, batches=BATCHES)
    print(markdown(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
