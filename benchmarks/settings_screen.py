"""Scheduler settings on the ideal engine: a grid of settings, each served the same simulated
bursts of held-out answers, as ratios to FCFS's mean latency and TTFT.

A screen, not a result: the ideal engine (``core/simulation.py``) leaves out what the real
engine adds, except recomputation after a preemption (``--prefill-tokens-per-step``), so a
setting it favours is then measured with ``trail bench`` before it becomes a default.
Bursts are ``--burst-size`` answers of one split of a collection drawn with seeds 0, 1, ...;
every setting serves the same bursts with the same predictions. With ``--load`` they arrive
as a Poisson stream instead, at that share of the ideal engine's capacity (``--slots``
requests at a time, one token each per step).

    .venv/bin/python benchmarks/settings_screen.py runs/greedy --split validation \\
        --grid refinementPrior=probe,prompt --grid evidenceWeight=1,0.2,0.05 --grid probeRanksAfter=0,16 \\
        --output screen.json

Each ``--grid NAME=V1,V2`` names a setting as the admin API does; the grid is their product,
on top of ``--set NAME=V`` (fixed) and the shipped defaults. Writes the table as JSON and a
PNG (mean latency against TTFT, one point per setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from trail_contract.settings import PolicyName, SchedulerSettings  # noqa: E402
from trail_scheduler.bench.config import REVERSIBLE  # noqa: E402
from trail_scheduler.bench.probes import reversed_predictors  # noqa: E402
from trail_scheduler.core.refine import expected_remaining  # noqa: E402
from trail_scheduler.core.simulation import simulate  # noqa: E402
from trail_scheduler.predictors import SHIPPED_PROBE, SHIPPED_PROMPT_PREDICTOR  # noqa: E402
from trail_scheduler.probe import LoadedProbe, load_probe  # noqa: E402
from trail_scheduler.probe.prompt import PromptPredictor, load_prompt_predictor  # noqa: E402
from trail_scheduler.training.data import Collection, RequestStates  # noqa: E402
from trail_scheduler.training.evaluate import (  # noqa: E402
    ENGINE_STEP_SECONDS,
    RANKED_AFTER,
    probe_readings,
    rank_correlation,
    recorded_requests,
    replay,
)


def _value(text: str):
    """``0.05`` -> 0.05, ``true`` -> True, ``prompt`` -> "prompt" (a choice's name)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _assignment(text: str) -> tuple[str, list]:
    name, _, values = text.partition("=")
    if not name or not values:
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    return name, [_value(v) for v in values.split(",")]


def settings_grid(fixed: dict, grid: list[tuple[str, list]]) -> list[tuple[dict, SchedulerSettings]]:
    """Every combination of the grid's values over ``fixed`` and the defaults, validated as the
    admin API validates a PUT (a bad name or value fails here, before anything runs)."""
    names = [name for name, _ in grid]
    combos = []
    for values in itertools.product(*(values for _, values in grid)):
        changed = dict(zip(names, values))
        combos.append((changed, SchedulerSettings.model_validate({**fixed, **changed})))
    return combos


def add_workload_arguments(parser: argparse.ArgumentParser, bursts: int) -> None:
    """What is served: the collection's answers, the predictors reading them, the bursts."""
    parser.add_argument("collection")
    parser.add_argument("--probe", default=str(SHIPPED_PROBE))
    parser.add_argument("--prompt-predictor", default=str(SHIPPED_PROMPT_PREDICTOR))
    parser.add_argument(
        "--reverse-bins",
        choices=REVERSIBLE,
        help="serve copies of the predictors whose bins are reversed (as trail bench --reverse-bins)",
    )
    parser.add_argument("--split", default="validation", choices=("validation", "test", "train"))
    parser.add_argument("--bursts", type=int, default=bursts)
    parser.add_argument("--burst-size", type=int, default=32)
    parser.add_argument("--slots", type=int, default=8, help="batch slots (the engine's max-num-seqs)")
    parser.add_argument(
        "--load", type=float, help="Poisson arrivals at this share of the ideal engine's capacity (default: a burst)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_arguments(parser, bursts=12)
    parser.add_argument(
        "--prefill-tokens-per-step",
        type=float,
        default=128.0,
        help="what a preempted request's recomputation costs: tokens prefilled per step (inf: free)",
    )
    parser.add_argument("--set", dest="fixed", action="append", type=_assignment, default=[], metavar="NAME=V")
    parser.add_argument("--grid", action="append", type=_assignment, default=[], metavar="NAME=V1,V2")
    parser.add_argument("--output", "-o", default="settings_screen.json")
    args = parser.parse_args()
    fixed = {name: values[0] for name, values in args.fixed}
    combos = settings_grid(fixed, args.grid)

    answers = load_answers(args.collection, args.split, args.probe, args.prompt_predictor, args.reverse_bins)
    probe, predictor, recorded = answers.probe, answers.predictor, answers.recorded
    size = min(args.burst_size, len(recorded))
    bursts = [drawn(recorded, size, seed, args.slots, args.load) for seed in range(args.bursts)]

    def serve(settings: SchedulerSettings):
        return [
            simulate(
                burst,
                settings,
                probe.bins,
                args.slots,
                step_seconds=ENGINE_STEP_SECONDS,
                prefill_tokens_per_step=args.prefill_tokens_per_step,
            )
            for burst in bursts
        ]

    defaults = SchedulerSettings.model_validate(fixed)
    fcfs = serve(defaults.model_copy(update={"policy": PolicyName.FCFS}))

    def ratios(outcomes) -> dict:
        return {
            "mean_latency": round(float(np.mean([o.mean_latency / f.mean_latency for o, f in zip(outcomes, fcfs)])), 3),
            "ttft": round(float(np.mean([o.mean_ttft / f.mean_ttft for o, f in zip(outcomes, fcfs)])), 3),
            "preemptions_per_burst": round(float(np.mean([o.preemptions for o in outcomes])), 1),
            "guard_fell_back": sum(len(o.guard_levels) > 1 for o in outcomes),  # bursts where it acted
        }

    references = {
        "trail+ (true lengths)": ratios(serve(defaults.model_copy(update={"policy": PolicyName.TRAIL_ORACLE}))),
        "trail, c=0": ratios(serve(defaults.model_copy(update={"c": 0.0}))),
        "trail, shipped defaults": ratios(serve(SchedulerSettings())),
    }
    rows = []
    for changed, settings in tqdm(combos, desc="settings", unit="setting"):
        _, _, _, ranked = replay(
            answers.states,
            answers.first,
            answers.readings,
            answers.estimates,
            probe.bins,
            settings,
            (predictor.bins, answers.distributions),
        )
        rows.append(
            {
                "settings": changed,
                **ratios(serve(settings)),
                f"rank_correlation_after_{RANKED_AFTER}": round(rank_correlation(*ranked), 3),
            }
        )
    rows.sort(key=lambda row: row["mean_latency"])
    report = {
        "collection": str(args.collection),
        "split": args.split,
        "answers": len(recorded),
        "probe_sha256": probe.sha256,
        "prompt_predictor_sha256": predictor.loaded.sha256,
        "reverse_bins": args.reverse_bins,
        "step_seconds": ENGINE_STEP_SECONDS,
        "bursts": args.bursts,
        "load": args.load,
        "burst_size": size,
        "slots": args.slots,
        "prefill_tokens_per_step": None if math.isinf(args.prefill_tokens_per_step) else args.prefill_tokens_per_step,
        "fixed": fixed,
        "references": references,
        "rows": rows,
    }
    output = Path(args.output)
    output.write_text(json.dumps(report, indent=2))
    _plot(output.with_suffix(".png"), report)
    print(f"{'mean':>6} {'TTFT':>6} {'preempt':>7} {'guard':>5}  settings  (guard: bursts in which it fell back)")
    for name, row in [*references.items(), *((row["settings"], row) for row in rows)]:
        print(
            f"{row['mean_latency']:6.3f} {row['ttft']:6.3f} {row['preemptions_per_burst']:7.1f} "
            f"{row['guard_fell_back']:5d}  {name}"
        )
    print(f"wrote {output} and {output.with_suffix('.png')}")


@dataclasses.dataclass(frozen=True)
class Answers:
    """A split's recorded answers with the predictors' readings of them, ready to serve."""

    probe: LoadedProbe
    predictor: PromptPredictor
    states: RequestStates
    first: np.ndarray
    readings: list
    estimates: np.ndarray
    distributions: np.ndarray
    recorded: list


def load_answers(collection: str, split: str, probe: str, prompt_predictor: str, reverse_bins: str | None) -> Answers:
    """The answers of ``split`` and what the predictors (reversed copies with ``reverse_bins``)
    read in them."""
    if reverse_bins:
        folder = Path(tempfile.mkdtemp(prefix="trail-reversed-"))
        probe, prompt_predictor = reversed_predictors(reverse_bins, Path(probe), Path(prompt_predictor), folder)
    loaded = load_probe(probe)
    predictor = load_prompt_predictor(prompt_predictor)
    answers = Collection(collection)
    states = answers.load(loaded.layer, split, loaded.prompt_reading)
    prompts = answers.prompts()
    distributions = predictor.probabilities([prompts[i]["rendered"] for i in states.ids])
    estimates = np.atleast_1d(expected_remaining(distributions, predictor.bins))
    first, readings = probe_readings(loaded, states)
    recorded = recorded_requests(states, prompts, first, readings, estimates, (predictor.bins, distributions))
    return Answers(loaded, predictor, states, first, readings, estimates, distributions, recorded)


def drawn(recorded: list, size: int, seed: int, slots: int, load: float | None) -> list:
    """``size`` answers drawn with ``seed``, all arriving at once or, at ``load``, as a Poisson
    stream at that share of the ideal engine's capacity (``slots`` tokens per step)."""
    rng = np.random.default_rng(seed)
    chosen = [recorded[i] for i in sorted(rng.choice(len(recorded), size, replace=False))]
    if load is None:
        return chosen
    rate = load * slots / (np.mean([r.length for r in chosen]) * ENGINE_STEP_SECONDS)  # requests per second
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size))
    return [dataclasses.replace(r, arrival=float(t)) for r, t in zip(chosen, arrivals)]


def _plot(path: Path, report: dict) -> None:
    figure, axes = plt.subplots(figsize=(7, 5))
    rows = report["rows"]
    axes.scatter([r["ttft"] for r in rows], [r["mean_latency"] for r in rows], s=14, color="tab:blue", label="grid")
    for row in rows[:5]:
        label = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        axes.annotate(label, (row["ttft"], row["mean_latency"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for (name, row), marker in zip(report["references"].items(), ("*", "s", "^")):
        axes.scatter([row["ttft"]], [row["mean_latency"]], marker=marker, s=60, label=name)
    axes.axhline(1.0, color="grey", linewidth=0.6)
    axes.set_xlabel("mean TTFT / FCFS's")
    axes.set_ylabel("mean latency / FCFS's")
    shape = "bursts" if report["load"] is None else f"streams at {report['load']}x capacity"
    axes.set_title(f"ideal engine, {report['bursts']} {shape} of {report['burst_size']}, {report['slots']} slots")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
