"""``trail probe eval``: the predictors on held-out prompts, refined as the engine refines.

Each held-out request is replayed through :class:`PredictionTracker` (the scheduler's
own bookkeeping: prompt estimate, first embedding prediction p⁰, then shift + update
after every generated token), so the reported errors are the ones the engine's
``trail_prediction_error`` metric would measure for the same answers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from trail_contract.settings import PolicyName, SchedulerSettings
from trail_scheduler.core.refine import expected_remaining
from trail_scheduler.core.simulation import RecordedRequest, simulate
from trail_scheduler.core.tracker import PredictionTracker
from trail_scheduler.length_mix import LengthMix
from trail_scheduler.probe import ProbeFileError, load_probe
from trail_scheduler.probe.prompt import load_prompt_predictor
from trail_scheduler.training.data import Collection, CollectionError

RANKED_AFTER = 8  # tokens: how well the estimate then orders the answers (what the policy acts on)


def evaluate(
    directory,
    probe_path,
    prompt_predictor_path,
    output_dir,
    split: str = "test",
    settings: SchedulerSettings = SchedulerSettings(),
    bursts: int = 5,
    burst_size: int = 32,
    slots: int = 8,
    length_mix: LengthMix | None = None,
) -> dict:
    """MAE (tokens) of the prompt predictor, of the first prediction, and of the refined
    prediction along each answer, predicted as the engine would under ``settings`` (its
    interval, prior, evidence weight and when the probe ranks); how well the
    estimate after a few tokens ranks the answers; what that order is worth in ``bursts``
    simulated bursts (:func:`simulated_bursts`, drawn to ``length_mix`` if given); a
    true-vs-predicted-bin heatmap (PNG) and a JSON report in ``output_dir``."""
    started = time.perf_counter()
    collection = Collection(directory)
    probe = load_probe(probe_path)
    if probe.hidden_size != collection.hidden_size:
        raise ProbeFileError(
            f"the probe reads hidden size {probe.hidden_size}, the collection's model has {collection.hidden_size}"
        )
    predictor = load_prompt_predictor(prompt_predictor_path)
    states = collection.load(probe.layer, split, probe.prompt_reading)
    prompts = collection.prompts()
    texts = [prompts[i]["rendered"] for i in states.ids]
    distributions = predictor.probabilities(texts)
    prompt_estimates = np.atleast_1d(expected_remaining(distributions, predictor.bins))
    first, readings = probe_readings(probe, states)
    bins = probe.bins
    errors, prompt_pairs, refined_pairs, ranked = replay(
        states,
        first,
        readings,
        prompt_estimates,
        bins,
        settings,
        (predictor.bins, distributions),
    )
    mae = {stage: round(float(np.mean(v)), 2) for stage, v in errors.items()}
    recorded = recorded_requests(states, prompts, first, readings, prompt_estimates, (predictor.bins, distributions))
    report = {
        "split": split,
        "requests": len(states.ids),
        "generated_tokens": int(states.lengths.sum()),
        "mean_answer_length": round(float(states.lengths.mean()), 1),
        "mae_tokens": mae,
        "prompt_over_refined": round(mae["prompt"] / max(mae["refined"], 1e-9), 2),
        "prompt_over_first": round(mae["prompt"] / max(mae["first"], 1e-9), 2),
        "probe": {
            "path": str(probe_path),
            "sha256": probe.sha256,
            "layer": probe.layer,
            "prompt_reading": probe.prompt_reading,
        },
        "prompt_predictor": {"path": str(prompt_predictor_path), "sha256": predictor.loaded.sha256},
        "predict_every": settings.predict_every,
        "refinement_prior": settings.refinement_prior.value,
        "evidence_weight": settings.evidence_weight,
        "probe_ranks_after": settings.probe_ranks_after,
        f"rank_correlation_after_{RANKED_AFTER}_tokens": round(rank_correlation(*ranked), 3),
        "simulated_bursts": simulated_bursts(
            recorded, settings, bins, bursts, burst_size, slots, length_mix, collection.info["sampling"]["max_tokens"]
        ),
        "definitions": {
            "prompt": "|prompt estimate - L| per request",
            "first": "|first estimate + 1 - L| per request (the belief as it starts under the prior)",
            "refined": "per request, the mean over generated tokens of |predicted remaining - true remaining|, "
            "predicted as the scheduler does (PredictionTracker); then the mean over requests",
            f"rank_correlation_after_{RANKED_AFTER}_tokens": "Spearman's correlation between the predicted and the "
            f"true length after {RANKED_AFTER} generated tokens, over the requests that reach them",
            "simulated_bursts": "answers of this split drawn at random as bursts (to the length mix, if one "
            "is named), served on an ideal engine "
            "(one token per running request per step, free preemption) first come first served, by the oracle "
            "(true lengths), and by TRAIL with these predictions and settings, with and without preemption "
            "(c = 0); mean latency and TTFT as ratios to FCFS's, the share of the oracle's gain, per burst",
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _heatmap(output_dir / "heatmap.png", bins.count, prompt_pairs, refined_pairs, report)
    report["heatmap"] = str(output_dir / "heatmap.png")
    (output_dir / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def probe_readings(probe, states) -> tuple[np.ndarray, np.ndarray]:
    """The probe on a split's recorded states: ``p⁰`` per request ``[R, K]`` (its prompt
    reading) and the reading of every output token ``[T, K]`` (rows as in ``states.offsets``)."""
    with torch.inference_mode():
        first = probe.module.probabilities(states.prompt).double().numpy()
        readings = probe.module.probabilities(states.tokens.float()).double().numpy()
    return first, readings


def recorded_requests(
    states, prompts: dict, first: np.ndarray, readings: np.ndarray, prompt_estimates, prompt_distributions=None
) -> list[RecordedRequest]:
    """The split's answers as the ideal engine replays them (:func:`simulated_bursts`), each
    with its probe readings and the prompt estimate it is ranked on while it waits;
    ``prompt_distributions``: the prompt predictor's ``(bins, [R, K'])``, or None."""
    return [
        RecordedRequest(
            request_id=request_id,
            arrival=0.0,
            length=int(states.lengths[r]),
            prompt_tokens=int(prompts[request_id]["prompt_tokens"]),
            first_reading=first[r],
            readings=readings[states.offsets[r] : states.offsets[r + 1]],
            prompt_estimate=float(prompt_estimates[r]),
            prompt_distribution=None
            if prompt_distributions is None
            else (prompt_distributions[0], prompt_distributions[1][r]),
        )
        for r, request_id in enumerate(states.ids)
    ]


def replay(
    states,
    first: np.ndarray,
    readings: np.ndarray,
    prompt_estimates,
    bins,
    settings: SchedulerSettings = SchedulerSettings(),
    prompt_distributions=None,
):
    """Feed each request's probe readings to a :class:`PredictionTracker` as the scheduler
    does; returns the per-request errors by stage, (true bin, predicted bin) pairs (per
    request for the prompt predictor, per generated token for the refined estimate), and
    the (predicted, true) lengths after :data:`RANKED_AFTER` tokens.

    ``first`` ``[R, K]``: p⁰ per request; ``readings`` ``[T, K]``: the probe on each output
    token (rows as in ``states.offsets``); ``prompt_estimates``: per request, or None;
    ``prompt_distributions``: the prompt predictor's ``(bins, [R, K'])``, or None.
    """
    tracker = PredictionTracker(bins, settings)
    errors = {"prompt": [], "first": [], "refined": []}
    prompt_pairs, refined_pairs = [], []
    ranked_predicted, ranked_true = [], []
    for r, request_id in enumerate(states.ids):
        length = int(states.lengths[r])
        estimate = None if prompt_estimates is None else float(prompt_estimates[r])
        distribution = None
        if prompt_distributions is not None:
            distribution = (prompt_distributions[0], prompt_distributions[1][r])
        tracker.add(request_id, prompt_estimate=estimate, prompt_distribution=distribution)
        tracker.advance(request_id, 1)  # the prefill step samples output token 0
        tracker.observe([request_id], first[r : r + 1], [True])
        rows = readings[states.offsets[r] : states.offsets[r + 1]]
        for j in range(length - 1):  # output token j is fed back; its state is read
            tracker.advance(request_id, 1)
            if (j + 1) % settings.predict_every == 0:
                tracker.observe([request_id], rows[j : j + 1], [False])
        history = np.asarray(tracker.get(request_id).history)
        result = tracker.finish(request_id, length)
        for stage in errors:
            errors[stage].append(getattr(result, stage))
        truth = length - np.arange(len(history))
        if len(history) > RANKED_AFTER:
            ranked_predicted.append(history[RANKED_AFTER] + RANKED_AFTER)
            ranked_true.append(length)
        refined_pairs.extend((bins.index(t), bins.index(max(0.0, h))) for t, h in zip(truth, history))
        prompt_pairs.append(
            (bins.index(length), bins.index(max(0.0, tracker.unknown_estimate if estimate is None else estimate)))
        )
    return errors, prompt_pairs, refined_pairs, (ranked_predicted, ranked_true)


# One decode step of 8 sequences of the bundled model on 2 CPU cores (the bench's FCFS burst
# generated 96.9 tokens/s): the ideal engine's step, so that the starvation bound, which is in
# seconds, binds after as many steps as on the real engine (a step of 1 s would put every
# request of a long burst in arrival order after 300 steps).
ENGINE_STEP_SECONDS = 0.083


def simulated_bursts(
    recorded: list[RecordedRequest],
    settings: SchedulerSettings,
    bins,
    bursts: int,
    size: int,
    slots: int,
    mix: LengthMix | None = None,
    cap: int | None = None,
) -> dict:
    """What the predictions' order is worth, apart from the engine: each burst is ``size``
    recorded answers (drawn with seed 0, 1, ..., uniformly or to ``mix`` with the collection's
    ``cap``) served by :func:`simulate` under FCFS, the oracle, and TRAIL with ``settings`` as
    given and with ``c = 0`` (the order alone)."""
    policies = {
        "fcfs": settings.model_copy(update={"policy": PolicyName.FCFS}),
        "trail+": settings.model_copy(update={"policy": PolicyName.TRAIL_ORACLE}),
        "trail": settings.model_copy(update={"policy": PolicyName.TRAIL}),
        "trail, c=0": settings.model_copy(update={"policy": PolicyName.TRAIL, "c": 0.0}),
    }
    size = min(size, len(recorded))
    runs = {name: [] for name in policies}
    for seed in range(bursts):
        if mix is None:
            chosen = np.random.default_rng(seed).choice(len(recorded), size=size, replace=False)
            burst = [recorded[i] for i in sorted(chosen)]
        else:
            try:
                burst = mix.draw(recorded, lambda request: request.length, size, cap, seed)
            except ValueError as error:
                raise CollectionError(f"{error} (held-out answers of this split)") from None
        for name, policy in policies.items():
            runs[name].append(simulate(burst, policy, bins, slots, step_seconds=ENGINE_STEP_SECONDS))
    fcfs = runs["fcfs"]
    report: dict = {"bursts": bursts, "size": size, "slots": slots, "length_mix": mix.name if mix else "natural"}
    for name, outcomes in runs.items():
        latency = [o.mean_latency / f.mean_latency for o, f in zip(outcomes, fcfs)]
        report[name] = {
            "mean_latency_ratio": round(float(np.mean(latency)), 3),
            "per_burst": [round(x, 3) for x in latency],
            "ttft_ratio": round(float(np.mean([o.mean_ttft / f.mean_ttft for o, f in zip(outcomes, fcfs)])), 3),
            "preemptions_per_burst": round(float(np.mean([o.preemptions for o in outcomes])), 1),
        }
    oracle_gain = 1 - report["trail+"]["mean_latency_ratio"]
    for name in ("trail", "trail, c=0"):
        gain = 1 - report[name]["mean_latency_ratio"]
        report[name]["share_of_oracle_gain"] = round(gain / oracle_gain, 3) if oracle_gain > 0 else None
    return report


def _ranks(values) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank (many answers end at the same cap)."""
    _, inverse, counts = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts + 1) / 2)[inverse]


def rank_correlation(predicted, true) -> float:
    """Spearman's: the Pearson correlation of the ranks (0 where either side is constant)."""
    a, b = _ranks(predicted), _ranks(true)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _heatmap(path: Path, k: int, prompt_pairs, refined_pairs, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for axis, pairs, title in (
        (axes[0], prompt_pairs, f"prompt predictor (per request), MAE {report['mae_tokens']['prompt']}"),
        (axes[1], refined_pairs, f"refined (per token), MAE {report['mae_tokens']['refined']}"),
    ):
        counts = np.zeros((k, k))
        for true_bin, predicted_bin in pairs:
            counts[true_bin, predicted_bin] += 1
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # each true bin's row sums to 1
        image = axis.imshow(shares, origin="lower", cmap="viridis", vmin=0, vmax=1)
        axis.set_xlabel("predicted bin")
        axis.set_ylabel("true bin")
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.suptitle(f"{report['split']} split, {report['requests']} requests: share of each true bin", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


__all__ = ["CollectionError", "evaluate"]
