"""``trail probe train`` and ``trail probe sweep``: the reference recipe.

AdamW, learning rate 0.01 cosine-annealed to 0 over all epochs, 30 epochs, batch 32,
cross-entropy over the bins; early stopping keeps the epoch with the lowest validation
MAE (tokens, of the expected remaining length). Inputs are standardised while training
(hidden states have a few very large dimensions) and the standardisation is folded into
the first layer afterwards, so the saved probe reads raw hidden states like any other.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.refine import expected_remaining
from trail_scheduler.probe import LengthProbe, save_probe
from trail_scheduler.training.data import Collection, CollectionError
from trail_scheduler.training.options import Recipe

logger = logging.getLogger("trail.train")


def default_bins(collection: Collection) -> LengthBins:
    """The reference's 10 equal bins over 0..max_tokens remaining tokens."""
    return LengthBins.uniform(10, float(collection.info["sampling"]["max_tokens"]))


def mae(
    module: torch.nn.Module,
    x: torch.Tensor,
    remaining: torch.Tensor,
    bins: LengthBins,
    prompt_rows: int = 0,
    prompt_share: float | None = None,
) -> float:
    """Mean absolute error (tokens) of the expected remaining length; with ``prompt_share``,
    the first ``prompt_rows`` rows (the prompts') weigh that share of it."""
    module.eval()
    errors = []
    with torch.inference_mode():
        for start in range(0, len(x), 8192):
            p = torch.softmax(module(x[start : start + 8192]), dim=-1).double().numpy()
            errors.append(np.abs(expected_remaining(p, bins) - remaining[start : start + 8192].numpy()))
    errors = np.concatenate(errors)
    if prompt_share is None or not 0 < prompt_rows < len(errors):
        return float(errors.mean())
    return float(prompt_share * errors[:prompt_rows].mean() + (1 - prompt_share) * errors[prompt_rows:].mean())


def epoch_rows(rows: int, prompt_rows: int, prompt_share: float | None) -> torch.Tensor:
    """The row indices one epoch visits: each once, and the first ``prompt_rows`` (the prompts')
    repeated so they make up about ``prompt_share`` of the epoch (at least once each)."""
    index = torch.arange(rows)
    if prompt_share is None or not 0 < prompt_rows < rows:
        return index
    repeats = max(1, round(prompt_share * (rows - prompt_rows) / ((1 - prompt_share) * prompt_rows)))
    return torch.cat([index, torch.arange(prompt_rows).repeat(repeats - 1)])


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_remaining: torch.Tensor,
    bins: LengthBins,
    recipe: Recipe,
    desc: str = "train",
    prompt_rows: int = 0,
    val_prompt_rows: int = 0,
) -> tuple[LengthProbe, list[dict], int]:
    """Train a :class:`LengthProbe` on (x, y); returns the best-on-validation module
    (raw-input weights), the per-epoch history and the best epoch. The first ``prompt_rows``
    of x (``val_prompt_rows`` of val_x) are the prompts' rows that ``recipe.prompt_share`` weighs."""
    from tqdm import tqdm

    # Batch-32 steps are too small to gain from threads, and spinning OpenMP threads
    # stall badly when other processes share the cores.
    torch.set_num_threads(1)
    torch.manual_seed(recipe.seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs, val_xs = (x - mean) / std, (val_x - mean) / std
    probe = LengthProbe(x.shape[1], bins.count, recipe.hidden_units)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    visits = epoch_rows(len(xs), prompt_rows, recipe.prompt_share)
    steps = recipe.epochs * math.ceil(len(visits) / recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=0.0)
    best, best_mae, best_epoch, history = None, math.inf, 0, []
    bar = tqdm(range(1, recipe.epochs + 1), desc=desc, unit="epoch")
    for epoch in bar:
        probe.train()
        order = visits[torch.randperm(len(visits))]
        total = 0.0
        for start in range(0, len(order), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            loss = torch.nn.functional.cross_entropy(probe(xs[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        val_mae = mae(probe, val_xs, val_remaining, bins, val_prompt_rows, recipe.prompt_share)
        history.append({"epoch": epoch, "train_loss": round(total / len(order), 4), "val_mae": round(val_mae, 2)})
        bar.set_postfix(loss=f"{total / len(order):.3f}", val_mae=f"{val_mae:.1f}")
        if val_mae < best_mae:
            best, best_mae, best_epoch = copy.deepcopy(probe.state_dict()), val_mae, epoch
        elif epoch - best_epoch >= recipe.patience:
            break
    bar.close()
    probe.load_state_dict(best)
    with torch.no_grad():  # fold the standardisation into fc1: W(x-μ)/σ + b = (W/σ)x + (b - W μ/σ)
        weight = probe.fc1.weight / std
        probe.fc1.bias -= weight @ mean
        probe.fc1.weight.copy_(weight)
    return probe.eval(), history, best_epoch


def _subsample(x, y, r, prompt_rows: int, limit: int | None, seed: int):
    """A random ``limit`` rows, in their order (the prompts' rows stay first); and how many
    of the prompts' rows are kept."""
    if limit is None or len(x) <= limit:
        return x, y, r, prompt_rows
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return x[keep], y[keep], r[keep], int((keep < prompt_rows).sum())


def train_layer(collection: Collection, layer: int, bins: LengthBins, recipe: Recipe, desc: str | None = None):
    """Train one layer's probe; returns (probe, validation MAE, training metadata)."""
    started = time.perf_counter()
    train = collection.load(layer, "train", recipe.prompt_reading)
    validation = collection.load(layer, "validation", recipe.prompt_reading)
    x, y, r = train.examples(bins, recipe.token_stride)  # the prompts' rows first
    x, y, r, prompt_rows = _subsample(x, y, r, len(train.ids), recipe.max_train_examples, recipe.seed)
    val_x, _, val_r = validation.examples(bins, recipe.token_stride)
    val_prompt_rows = len(validation.ids)
    probe, history, best_epoch = fit(
        x, y, val_x, val_r, bins, recipe, desc or f"layer {layer}", prompt_rows, val_prompt_rows
    )
    val_mae = mae(probe, val_x, val_r, bins, val_prompt_rows, recipe.prompt_share)
    meta = {
        "recipe": {
            "optimizer": "AdamW",
            "schedule": "cosine to 0",
            "loss": "cross-entropy over bins",
            **asdict(recipe),
        },
        "input_standardisation": "folded into fc1",
        "data": {
            "collection": str(collection.directory),
            "model": collection.info["model"],
            "sampling": collection.info["sampling"],
            "train_requests": len(train.ids),
            "validation_requests": len(validation.ids),
            "train_examples": len(x),
            "validation_examples": len(val_x),
            "split_seed": collection.split["seed"],
        },
        "labels": f"prompt {recipe.prompt_reading} -> L-1 remaining; output token j -> L-j-2",
        "best_epoch": best_epoch,
        "history": history,
        "validation_mae_tokens": round(val_mae, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return probe, val_mae, meta


def train_probe(
    directory, output, layer: int | None = None, bins: LengthBins | None = None, recipe: Recipe = Recipe()
) -> dict:
    """``trail probe train``: one probe file (layer default: the sweep's best, else a third of the depth)."""
    collection = Collection(directory)
    if layer is None:
        layer = _best_swept_layer(collection)
    bins = bins or default_bins(collection)
    probe, val_mae, meta = train_layer(collection, layer, bins, recipe)
    sha = save_probe(
        probe,
        bins,
        output,
        model=collection.info["model"],
        layer=layer,
        training=meta,
        prompt_reading=recipe.prompt_reading,
    )
    return {
        "probe": str(output),
        "sha256": sha,
        "layer": layer,
        "validation_mae_tokens": round(val_mae, 2),
        "best_epoch": meta["best_epoch"],
    }


def _best_swept_layer(collection: Collection) -> int:
    sweep = collection.directory / "sweep" / "sweep.json"
    if sweep.exists():
        return int(json.loads(sweep.read_text())["best_layer"])
    layers = collection.layers
    third = collection.info["num_layers"] // 3
    return min(layers, key=lambda layer: abs(layer - third))


def sweep(
    directory, layers: list[int] | None = None, bins: LengthBins | None = None, recipe: Recipe = Recipe()
) -> dict:
    """``trail probe sweep``: a probe per layer, validation MAE per layer, a plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    collection = Collection(directory)
    layers = layers or collection.layers
    bins = bins or default_bins(collection)
    out = collection.directory / "sweep"
    out.mkdir(exist_ok=True)
    results = {}
    for layer in layers:
        _, val_mae, meta = train_layer(collection, layer, bins, recipe, desc=f"sweep layer {layer}")
        results[layer] = {
            "validation_mae_tokens": round(val_mae, 2),
            "best_epoch": meta["best_epoch"],
            "seconds": meta["seconds"],
        }
        logger.info("layer %d: validation MAE %.1f tokens", layer, val_mae)
    best = min(results, key=lambda layer: results[layer]["validation_mae_tokens"])
    report = {
        "layers": {str(k): v for k, v in results.items()},
        "best_layer": best,
        "recipe": asdict(recipe),
        "num_layers": collection.info["num_layers"],
        "plot": str(out / "sweep.png"),
    }
    (out / "sweep.json").write_text(json.dumps(report, indent=2))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(list(results), [v["validation_mae_tokens"] for v in results.values()], marker="o")
    axis.set_xlabel(f"layer (of {collection.info['num_layers']})")
    axis.set_ylabel("validation MAE (tokens)")
    axis.set_title(f"Probe per layer: {collection.info['model']}")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "sweep.png", dpi=120)
    plt.close(figure)
    return report


__all__ = ["CollectionError", "Recipe", "default_bins", "fit", "mae", "sweep", "train_layer", "train_probe"]
