"""TRAIL's per-step cost in vLLM's scheduler: telling the kept decision what changed, the
decision, and encoding it as priorities, at 1,000 waiting / 256 running.

The scheduler is the real ``TrailScheduler`` built without a model, as the in-process
tests build it (``tests/engine_adapter/harness.py``): 256 requests decoding, 1,000 queued,
predicted lengths spread over 1-512 tokens. ``c = 0`` so the timed calls preempt nothing:
a step where nothing changed; one where a few running requests' estimates moved (8 of
them generated a token since the last step); one where every running request did (a
decode step); and, for comparison, the policy's decision rebuilt from every request's
view, as every step did before the decision was kept between steps. ``c = 1`` times a
step whose decision preempts (each call on a freshly built state whose requests the kept
decision has taken in, fewer repeats).

    .venv/bin/python benchmarks/scheduler_step.py [--repeats 200] [--out docs/benchmarks/scheduler_step.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' scheduler builder

from tests.engine_adapter.harness import build_scheduler, make_request  # noqa: E402
from trail_scheduler.vllm.scheduler import TrailScheduler  # noqa: E402

RUNNING, WAITING = 256, 1000


def loaded_scheduler(c: float, seed: int = 0) -> TrailScheduler:
    rng = random.Random(seed)
    scheduler = build_scheduler(
        TrailScheduler,
        max_num_seqs=RUNNING,
        num_blocks=4 * (RUNNING + WAITING) + 1,
        max_num_batched_tokens=16 * RUNNING,
        policy="trail",
        c=c,
    )
    for i in range(RUNNING):
        scheduler.add_request(make_request(f"r{i}", max_tokens=512, estimate=rng.uniform(1, 512)))
    scheduler.schedule()  # all 256 prompts prefilled in one step: they are running
    for i in range(WAITING):
        scheduler.add_request(make_request(f"w{i}", max_tokens=512, estimate=rng.uniform(1, 512)))
    assert len(scheduler.running) == RUNNING and len(scheduler.waiting) == WAITING
    return scheduler


def timed(call, repeats: int) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(samples), "p90_ms": statistics.quantiles(samples, n=10)[-1]}


def estimates_moved(scheduler: TrailScheduler, count: int, rng: random.Random, repeats: int):
    """A step in which ``count`` running requests generated a token (their estimates count down,
    as the engine's output processing does: timed with the step, since it is TRAIL's work too).
    Which ones is drawn before the clock starts."""
    running = [r.request_id for r in scheduler.running]
    draws = iter([rng.sample(running, count) for _ in range(repeats)])

    def step() -> None:
        moved = next(draws)
        for request_id in moved:
            scheduler.trail_tracker.advance(request_id, 1)
        scheduler._trail_changed.update(moved)
        scheduler._trail_order_and_preempt()

    return step


def parts(scheduler: TrailScheduler, repeats: int) -> dict[str, dict[str, float]]:
    """Steps with nothing, a few and every running request changed; the rebuilt decision."""
    from trail_scheduler.core.policy import Room

    rng = random.Random(1)
    scheduler._trail_order_and_preempt()  # the first decision takes in every request
    unchanged = timed(scheduler._trail_order_and_preempt, repeats)
    few_moved = timed(estimates_moved(scheduler, 8, rng, repeats), repeats)
    all_moved = timed(estimates_moved(scheduler, len(scheduler.running), rng, repeats), repeats)
    now = time.time()
    waiting = [scheduler._waiting_view(r) for r in scheduler.waiting]
    running = [scheduler._running_view(r) for r in scheduler.running]
    room = Room(free_slots=0, free_blocks=scheduler.kv_cache_manager.block_pool.get_num_free_blocks())
    policy = scheduler.trail_queues.policy
    return {
        "nothing_changed": unchanged,
        "8_estimates_moved": few_moved,
        "every_running_estimate_moved": all_moved,
        "rebuilt_decision_alone": timed(lambda: policy.decide(waiting, running, room, now), repeats),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    steady = parts(loaded_scheduler(c=0.0), args.repeats)
    preempting = [loaded_scheduler(c=1.0, seed=s) for s in range(min(args.repeats, 20))]
    samples = []
    for scheduler in preempting:
        scheduler._trail_tell_changes()  # the requests taken in, as the steps before would have
        started = time.perf_counter()
        scheduler._trail_order_and_preempt()
        samples.append((time.perf_counter() - started) * 1e3)
    result = {
        "running": RUNNING,
        "waiting": WAITING,
        "steps": steady,
        "preempting_step": {
            "median_ms": statistics.median(samples),
            "calls": len(samples),
            "preempted_per_call": statistics.median(s.trail_preemptions_total for s in preempting),
        },
        "command": "python benchmarks/scheduler_step.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
