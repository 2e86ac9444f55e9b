"""Argument parsing and handlers for ``trail probe collect|train|sweep|eval`` and
``trail prompt-predictor train`` (registered by :mod:`trail_scheduler.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _layers(text: str):
    if text in ("all", "sweep"):
        return text
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all', 'sweep' or comma-separated layer indices, got {text!r}") from None


def add_probe_commands(probe_sub) -> None:
    from trail_scheduler.training.collect import CollectOptions

    d = CollectOptions(output=Path("."))
    collect = probe_sub.add_parser(
        "collect", help="run the engine on prompts and store hidden states with true lengths (resumable)"
    )
    collect.add_argument("output", type=Path, help="collection folder (created; rerun to resume)")
    collect.add_argument("--model", help="checkpoint folder (default: the bundled SmolLM2-135M-Instruct)")
    collect.add_argument("--prompts", type=Path, dest="prompts_file", help='JSONL of {"prompt": ..., "id": ...} (default: ShareGPT first turns)')
    collect.add_argument("--layers", type=_layers, default=d.layers, help="'sweep' (default: every ~sixth and a third of the depth), 'all', or e.g. 8,10,12")
    collect.add_argument("--limit", type=int, default=d.limit, help="prompts to collect, counting earlier runs (default %(default)s)")
    collect.add_argument("--max-tokens", type=int, default=d.max_tokens)
    collect.add_argument("--temperature", type=float, default=d.temperature)
    collect.add_argument("--top-p", type=float, default=d.top_p)
    collect.add_argument("--seed", type=int, default=d.seed, help="split and sampling seed")
    collect.add_argument("--benchmark-size", type=int, default=d.benchmark_size, help="prompts set aside for `trail bench` (not collected)")
    collect.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    collect.add_argument("--test-fraction", type=float, default=d.test_fraction)
    collect.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="longer prompts are left out")
    collect.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    collect.add_argument("--shard-size", type=int, default=d.shard_size, help="requests per shard file")
    collect.add_argument("--kv-cache-gib", type=float, default=d.kv_cache_gib)
    collect.add_argument("--pool", type=int, help="read at most this many prompts from the source")
    collect.add_argument("--max-minutes", type=float, help="stop starting new prompts after this long (rerun to continue)")
    collect.set_defaults(handler=_collect)


def _collect(args) -> int:
    from trail_scheduler.training.collect import CollectOptions, collect
    from trail_scheduler.training.data import CollectionError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fields = CollectOptions.__dataclass_fields__
    options = CollectOptions(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        summary = collect(options)
    except CollectionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
