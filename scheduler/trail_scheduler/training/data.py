"""Reading a collection folder: its prompts, split, and the shards the engine wrote.

Folder layout (written by :mod:`trail_scheduler.training.collect`):

- ``collection.json``: model, layers, sampling, split settings, runs (time, tokens);
- ``prompts.jsonl``: every prompt of the pool, ``{"id", "split", "prompt", "rendered",
  "prompt_tokens"}`` (``rendered``: the chat-templated text the engine received);
- ``split.json``: seed, fractions and the ids of each split;
- ``benchmark.jsonl``: the benchmark split, ``{"id", "prompt"}`` (never collected);
- ``shards/shard-*.safetensors``: see :mod:`trail_scheduler.vllm.collector`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trail_contract.errors import TrailError
from trail_contract.probe_format import PROMPT_READINGS
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.vllm.collector import SHARD_GLOB, SHARD_METADATA_KEY

SPLITS = ("train", "validation", "test", "benchmark")


class CollectionError(TrailError):
    """A collection folder or input that cannot be used, with the reason."""


def _shard_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[SHARD_METADATA_KEY])


@dataclass
class RequestStates:
    """One layer's states for a set of requests (concatenated, in request order)."""

    ids: list[str]
    lengths: np.ndarray  # [R] answer lengths L
    prompt: torch.Tensor  # [R, H] float32: the state p⁰ is read from (the probe's prompt reading)
    tokens: torch.Tensor  # [T, H] float16: output token j of request r at offsets[r] + j
    offsets: np.ndarray  # [R+1]

    def examples(self, bins: LengthBins, token_stride: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features, bin labels and remaining lengths (label convention of the module doc).

        ``token_stride`` keeps every n-th output token (cheaper sweeps); prompts are all kept.
        """
        features, remaining = [self.prompt], [self.lengths - 1]
        token_rows = []
        for r, length in enumerate(self.lengths):
            j = np.arange(0, int(length) - 1, token_stride)
            token_rows.append(self.offsets[r] + j)
            remaining.append(length - j - 2)
        rows = torch.from_numpy(np.concatenate(token_rows)) if token_rows else torch.zeros(0, dtype=torch.long)
        features.append(self.tokens.index_select(0, rows).float())
        remaining_all = np.concatenate(remaining).astype(np.float64)
        labels = torch.tensor([bins.index(v) for v in remaining_all], dtype=torch.long)
        return torch.cat(features), labels, torch.from_numpy(remaining_all)


class Collection:
    """A collection folder, read-only."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        info = self.directory / "collection.json"
        if not info.exists():
            raise CollectionError(
                f"{self.directory} is not a collection folder (no collection.json): run `trail probe collect`"
            )
        self.info = json.loads(info.read_text())
        self.split = json.loads((self.directory / "split.json").read_text())

    @property
    def layers(self) -> list[int]:
        return list(self.info["layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.info["hidden_size"])

    def shards(self) -> list[tuple[Path, dict]]:
        return [(p, _shard_metadata(p)) for p in sorted((self.directory / "shards").glob(SHARD_GLOB))]

    def lengths(self) -> dict[str, int]:
        """Answer length of every collected request, by id."""
        from safetensors import safe_open

        lengths: dict[str, int] = {}
        for path, meta in self.shards():
            with safe_open(str(path), framework="pt") as handle:
                lengths.update(zip(meta["ids"], handle.get_tensor("lengths").tolist()))
        return lengths

    def collected_ids(self) -> set[str]:
        return {i for _, meta in self.shards() for i in meta["ids"]}

    def prompts(self) -> dict[str, dict]:
        with (self.directory / "prompts.jsonl").open() as handle:
            return {(row := json.loads(line))["id"]: row for line in handle if line.strip()}

    def load(self, layer: int, split: str, prompt_reading: str = PROMPT_READINGS[0]) -> RequestStates:
        """One layer's states of the collected requests in ``split``, with the prompt state
        ``prompt_reading`` names (one of :data:`PROMPT_READINGS`)."""
        if layer not in self.layers:
            raise CollectionError(f"layer {layer} was not collected; this collection has layers {self.layers}")
        from safetensors import safe_open

        wanted = set(self.split["ids"].get(split, []))
        li = self.layers.index(layer)
        ids, lengths, prompt_states, tokens, counts = [], [], [], [], []
        answer_lengths = self.lengths()
        for path, meta in self.shards():
            keep = [r for r, i in enumerate(meta["ids"]) if i in wanted]
            if not keep:
                continue
            with safe_open(str(path), framework="pt") as handle:
                tensor = f"prompt_{prompt_reading}"
                if tensor not in handle.keys():
                    raise CollectionError(
                        f"{path.name} has no {tensor!r} states (written by an older `trail probe collect`): "
                        f"train with --prompt-reading mean, or collect again"
                    )
                offsets = handle.get_tensor("offsets").numpy()
                prompt = handle.get_slice(tensor)[li].float()
                shard_tokens = handle.get_slice("tokens")[li]
            for r in keep:
                ids.append(meta["ids"][r])
                lengths.append(answer_lengths[meta["ids"][r]])
                prompt_states.append(prompt[r])
                tokens.append(shard_tokens[offsets[r] : offsets[r + 1]])
                counts.append(int(offsets[r + 1] - offsets[r]))
        if not ids:
            raise CollectionError(f"no collected requests in the {split!r} split of {self.directory}")
        return RequestStates(
            ids=ids,
            lengths=np.asarray(lengths, dtype=np.int64),
            prompt=torch.stack(prompt_states),
            tokens=torch.cat(tokens),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )
