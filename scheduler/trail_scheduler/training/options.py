"""Options of ``trail probe collect`` and the training recipe, importable without the engine stack (the CLI
builds its parser from them, and the operator image has no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trail_contract.probe_format import PROMPT_READINGS


@dataclass(frozen=True)
class CollectOptions:
    output: Path
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    prompts_file: Path | None = None  # JSONL {"prompt", "id"?}; None: bundled ShareGPT first turns
    layers: tuple[int, ...] | str = "sweep"  # layer indices, "all", or "sweep" (every ~sixth, and a third)
    limit: int = 2000  # prompts to collect (train + validation + test), counting earlier runs
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    benchmark_size: int = 500
    # The benchmark split drawn from the short requests (one line, an instruction or a question:
    # chosen by form, never by answer), and the remaining ones collected before other prompts.
    short_requests_first: bool = False
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_prompt_tokens: int = 1024
    max_num_seqs: int = 48
    shard_size: int = 64
    kv_cache_gib: float = 2.0
    pool: int | None = None  # read at most this many prompts from the source
    max_minutes: float | None = None  # stop admitting prompts after this long (running ones finish)


@dataclass(frozen=True)
class Recipe:
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 32
    weight_decay: float = 0.01  # AdamW's default
    patience: int = 5  # epochs without a better validation MAE before stopping
    hidden_units: int = 512
    seed: int = 0
    token_stride: int = 1  # keep every n-th output token (sweeps use more)
    max_train_examples: int | None = None  # random subset of the training examples
    prompt_reading: str = PROMPT_READINGS[0]  # the prompt state p⁰ is trained on and read from in serving
    # Share of the loss, and of the validation MAE early stopping watches, carried by the prompt
    # rows p⁰ is read from (repeated to make it up). None: one row each, as the paper trains, so
    # p⁰ is about 1 row in 350 and learns little of its own input.
    prompt_share: float | None = None
