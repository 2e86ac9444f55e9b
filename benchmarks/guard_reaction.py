"""How soon a fallback must come to undo wrong predictions: the best any guard that measures
outcomes could do, on the ideal engine.

Serves the same simulated bursts (or streams, ``--load``) as ``settings_screen.py`` with the
policy as set until step N and first come, first served from then on, as if a guard had
known from step N that the predictions were wrong. A guard that judges predictions by the
lengths they turn out to have knows nothing before requests generate tokens, so where the
harm is done within a burst's first steps, no such guard can undo it.

    .venv/bin/python benchmarks/guard_reaction.py runs/greedy --reverse-bins both --steps 0,3,8,30,100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from settings_screen import add_workload_arguments, drawn, load_answers

from trail_contract.settings import PolicyName, SchedulerSettings
from trail_scheduler.core.policy import Policy
from trail_scheduler.core.simulation import simulate
from trail_scheduler.training.evaluate import ENGINE_STEP_SECONDS


def arrival_order_from(step: int):
    """A Policy that decides as set for its first ``step`` decisions (one per engine step),
    then in arrival order."""

    class Switching:
        def __init__(self, settings: SchedulerSettings) -> None:
            self.decisions = 0
            self.as_set = Policy(settings)
            self.arrival_order = Policy(settings.model_copy(update={"policy": PolicyName.FCFS}))

        def decide(self, *args, **kwargs):
            self.decisions += 1
            return (self.as_set if self.decisions <= step else self.arrival_order).decide(*args, **kwargs)

    return Switching


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser, bursts=9)
    parser.add_argument("--steps", default="0,3,8,16,30,100", help="comma-separated steps to fall back after")
    parser.add_argument("--output", "-o")
    args = parser.parse_args()
    answers = load_answers(args.collection, args.split, args.probe, args.prompt_predictor, args.reverse_bins)
    size = min(args.burst_size, len(answers.recorded))
    bursts = [drawn(answers.recorded, size, seed, args.slots, args.load) for seed in range(args.bursts)]
    unguarded = SchedulerSettings(prediction_guard=False)

    def serve(settings: SchedulerSettings, policy_class=Policy) -> list:
        return [
            simulate(
                burst,
                settings,
                answers.probe.bins,
                args.slots,
                ENGINE_STEP_SECONDS,
                prefill_tokens_per_step=128,
                policy_class=policy_class,
            )
            for burst in bursts
        ]

    fcfs = serve(unguarded.model_copy(update={"policy": PolicyName.FCFS}))

    def mean_ratio(settings: SchedulerSettings, policy_class=Policy) -> float:
        outcomes = serve(settings, policy_class)
        return round(float(np.mean([o.mean_latency / f.mean_latency for o, f in zip(outcomes, fcfs)])), 3)

    rows = {"never (guard off)": mean_ratio(unguarded), "guard on (defaults)": mean_ratio(SchedulerSettings())}
    for step in (int(s) for s in args.steps.split(",")):
        rows[f"arrival order from step {step}"] = mean_ratio(unguarded, arrival_order_from(step))
    for name, ratio in rows.items():
        print(f"{ratio:6.3f}  {name}")
    if args.output:
        report = {**{k: v for k, v in vars(args).items() if k != "output"}, "mean_latency_over_fcfs": rows}
        Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
