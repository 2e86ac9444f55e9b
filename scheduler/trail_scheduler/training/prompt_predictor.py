"""``trail prompt-predictor train``: fit the prompt predictor's head on a collection.

The predictor itself (file format, encoder, serving) is :mod:`trail_scheduler.probe.prompt`.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import save_probe
from trail_scheduler.probe.prompt import ENCODER, HEAD_UNITS, KIND, embed
from trail_scheduler.training.data import Collection, CollectionError


def _split_data(collection: Collection, split: str, prompts: dict, lengths: dict, bins: LengthBins):
    ids = [i for i in collection.split["ids"].get(split, []) if i in lengths]
    if not ids:
        raise CollectionError(f"no collected requests in the {split!r} split of {collection.directory}")
    texts = [prompts[i]["rendered"] for i in ids]
    truth = np.asarray([lengths[i] for i in ids], dtype=np.float64)
    labels = torch.tensor([bins.index(v) for v in truth], dtype=torch.long)
    return ids, texts, labels, torch.from_numpy(truth)


def train_prompt_predictor(directory, output, bins: LengthBins | None = None, recipe=None) -> dict:
    """``trail prompt-predictor train``: fit the head on the collection's train split."""
    from trail_scheduler.training.train import Recipe, default_bins, fit, mae

    started = time.perf_counter()
    collection = Collection(directory)
    bins = bins or default_bins(collection)
    recipe = recipe or Recipe(epochs=30, lr=1e-3, hidden_units=HEAD_UNITS)
    prompts, lengths = collection.prompts(), collection.lengths()
    train_ids, train_texts, y, _ = _split_data(collection, "train", prompts, lengths, bins)
    val_ids, val_texts, _, val_truth = _split_data(collection, "validation", prompts, lengths, bins)
    x = embed(train_texts, progress=True)
    val_x = embed(val_texts)
    head, history, best_epoch = fit(x, y, val_x, val_truth, bins, recipe, desc="prompt predictor")
    val_mae = mae(head, val_x, val_truth, bins)
    training = {
        "kind": KIND,
        "encoder": ENCODER,
        "input": "chat-templated prompt text, as the engine receives it",
        "target": "answer length L (tokens)",
        "recipe": {
            "optimizer": "AdamW",
            "schedule": "cosine to 0",
            "loss": "cross-entropy over bins",
            **asdict(recipe),
        },
        "data": {
            "collection": str(collection.directory),
            "sampling": collection.info["sampling"],
            "train_requests": len(train_ids),
            "validation_requests": len(val_ids),
            "split_seed": collection.split["seed"],
        },
        "best_epoch": best_epoch,
        "history": history,
        "validation_mae_tokens": round(val_mae, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    sha = save_probe(head, bins, output, model=collection.info["model"], layer=0, training=training)
    return {
        "prompt_predictor": str(output),
        "sha256": sha,
        "validation_mae_tokens": round(val_mae, 2),
        "best_epoch": best_epoch,
    }
