"""Argument parsing and handlers for ``trail probe collect|train|sweep|eval`` and
``trail prompt-predictor train`` (registered by :mod:`trail_scheduler.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from trail_contract.settings import RefinementPrior, SchedulerSettings
from trail_contract.wire import explain
from trail_scheduler.length_mix import LENGTH_MIXES


def _layers(text: str):
    if text in ("all", "sweep"):
        return text
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all', 'sweep' or comma-separated layer indices, got {text!r}"
        ) from None


def add_probe_commands(probe_sub) -> None:
    from trail_scheduler.training.options import CollectOptions

    d = CollectOptions(output=Path("."))
    collect = probe_sub.add_parser(
        "collect", help="run the engine on prompts and store hidden states with true lengths (resumable)"
    )
    collect.add_argument("output", type=Path, help="collection folder (created; rerun to resume)")
    collect.add_argument("--model", help="checkpoint folder (default: the bundled SmolLM2-135M-Instruct)")
    collect.add_argument(
        "--prompts",
        type=Path,
        dest="prompts_file",
        help='JSONL of {"prompt": ..., "id": ...} (default: ShareGPT first turns)',
    )
    collect.add_argument(
        "--layers",
        type=_layers,
        default=d.layers,
        help="'sweep' (default: every ~sixth and a third of the depth), 'all', or e.g. 8,10,12",
    )
    collect.add_argument(
        "--limit", type=int, default=d.limit, help="prompts to collect, counting earlier runs (default %(default)s)"
    )
    collect.add_argument("--max-tokens", type=int, default=d.max_tokens)
    collect.add_argument("--temperature", type=float, default=d.temperature)
    collect.add_argument("--top-p", type=float, default=d.top_p)
    collect.add_argument("--seed", type=int, default=d.seed, help="split and sampling seed")
    collect.add_argument(
        "--benchmark-size",
        type=int,
        default=d.benchmark_size,
        help="prompts set aside for `trail bench` (not collected)",
    )
    collect.add_argument(
        "--short-requests-first",
        action="store_true",
        help="draw the benchmark split from the short requests (one line, an instruction or a question) "
        "and collect the rest of them before the other prompts",
    )
    collect.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    collect.add_argument("--test-fraction", type=float, default=d.test_fraction)
    collect.add_argument(
        "--max-prompt-tokens", type=int, default=d.max_prompt_tokens, help="longer prompts are left out"
    )
    collect.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    collect.add_argument("--shard-size", type=int, default=d.shard_size, help="requests per shard file")
    collect.add_argument("--kv-cache-gib", type=float, default=d.kv_cache_gib)
    collect.add_argument("--pool", type=int, help="read at most this many prompts from the source")
    collect.add_argument(
        "--max-minutes", type=float, help="stop starting new prompts after this long (rerun to continue)"
    )
    collect.set_defaults(handler=_collect)


def _collect(args) -> int:
    from trail_scheduler.training.collect import collect
    from trail_scheduler.training.options import CollectOptions

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fields = CollectOptions.__dataclass_fields__
    options = CollectOptions(**{k: v for k, v in vars(args).items() if k in fields})
    print(json.dumps(collect(options), indent=2))
    return 0


def _bins(args, collection):
    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.training.train import default_bins

    if args.bins is None:
        return default_bins(collection)
    max_tokens = float(collection.info["sampling"]["max_tokens"])
    if args.bins.startswith("log"):
        return LengthBins.log_spaced(int(args.bins[3:] or 12), max_tokens, open_top=False)
    return LengthBins.uniform(int(args.bins), max_tokens)


def _recipe_arguments(parser, **defaults) -> None:
    from trail_scheduler.training.options import Recipe

    d = Recipe(**defaults)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument(
        "--patience", type=int, default=d.patience, help="early stopping: epochs without a better validation MAE"
    )
    parser.add_argument("--hidden-units", type=int, default=d.hidden_units)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--token-stride", type=int, default=d.token_stride, help="train on every n-th output token")
    parser.add_argument("--max-train-examples", type=int, default=d.max_train_examples)
    parser.add_argument("--bins", help="number of equal bins over 0..max_tokens (default 10), or logN for log-spaced")


def _probe_arguments(parser) -> None:
    """What only a probe's training takes (not the prompt predictor's)."""
    from trail_contract.probe_format import PROMPT_READINGS

    parser.add_argument(
        "--prompt-reading",
        choices=PROMPT_READINGS,
        default=PROMPT_READINGS[0],
        help="the prompt state the first prediction is trained on and read from in serving: the prompt's states "
        "averaged (mean, the paper's) or the state at its last position (last)",
    )
    parser.add_argument(
        "--prompt-share",
        type=_share,
        help="share of the loss (and of the validation MAE early stopping watches) carried by the prompt states "
        "the first prediction reads, between 0 and 1 (default: one row per prompt, as the paper trains)",
    )


def _setting(name: str, parse):
    """An argument type for the engine setting ``name``, checked as the engine checks it, so
    eval never replays a value serving refuses."""
    from pydantic import ValidationError

    def checked(text: str):
        try:
            return getattr(SchedulerSettings(**{name: parse(text)}), name)
        except ValidationError as error:
            raise argparse.ArgumentTypeError(explain(error)) from None
        except ValueError:
            kind = "whole number" if parse is int else "number"
            raise argparse.ArgumentTypeError(f"not a {kind}: {text!r}") from None

    return checked


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _recipe(args):
    from trail_scheduler.training.options import Recipe

    return Recipe(**{k: getattr(args, k) for k in Recipe.__dataclass_fields__ if hasattr(args, k)})


def add_training_commands(probe_sub, sub) -> None:
    train = probe_sub.add_parser("train", help="train a probe on a collection (reference recipe, early stopping)")
    train.add_argument("collection", type=Path)
    train.add_argument("--output", "-o", type=Path, required=True, help="probe file to write (.safetensors)")
    train.add_argument("--layer", type=int, help="default: the sweep's best layer, else a third of the depth")
    _recipe_arguments(train)
    _probe_arguments(train)
    train.set_defaults(handler=_train)

    sweep = probe_sub.add_parser("sweep", help="a probe per collected layer: validation MAE per layer and a plot")
    sweep.add_argument("collection", type=Path)
    sweep.add_argument("--layers", help="comma-separated subset of the collected layers")
    _recipe_arguments(sweep)
    _probe_arguments(sweep)
    sweep.set_defaults(handler=_sweep)

    evaluate = probe_sub.add_parser(
        "eval",
        help="MAE of prompt predictor, first and refined predictions on held-out prompts, and what their order "
        "is worth in simulated bursts",
    )
    evaluate.add_argument("collection", type=Path)
    evaluate.add_argument("--probe", required=True, type=Path)
    evaluate.add_argument("--prompt-predictor", required=True, type=Path)
    evaluate.add_argument("--split", default="test", choices=["test", "validation", "train"])
    defaults = SchedulerSettings()
    evaluate.add_argument(
        "--predict-every",
        type=_setting("predict_every", int),
        default=defaults.predict_every,
        help="read the probe every k tokens, as the engine's setting of that name (default: the engine's)",
    )
    evaluate.add_argument(
        "--refinement-prior",
        choices=[p.value for p in RefinementPrior],
        default=defaults.refinement_prior.value,
        help="where each belief starts, as the engine's setting of that name (default: the engine's default)",
    )
    evaluate.add_argument(
        "--evidence-weight",
        type=_setting("evidence_weight", float),
        default=defaults.evidence_weight,
        help="the exponent on each probe reading, as the engine's setting of that name (default: the engine's)",
    )
    evaluate.add_argument(
        "--probe-ranks-after",
        type=_setting("probe_ranks_after", int),
        default=defaults.probe_ranks_after,
        help="tokens before the probe's belief ranks a request, as the engine's setting of that name "
        "(default: the engine's)",
    )
    evaluate.add_argument(
        "--bursts", type=_count, default=5, help="simulated bursts of held-out answers (default %(default)s)"
    )
    evaluate.add_argument("--burst-size", type=_count, default=32, help="answers per burst (default %(default)s)")
    evaluate.add_argument(
        "--slots", type=_count, default=8, help="batch slots of the simulated engine (default %(default)s)"
    )
    evaluate.add_argument(
        "--length-mix",
        choices=tuple(LENGTH_MIXES),
        default="natural",
        help="answer lengths of the simulated bursts: drawn uniformly, or to chat traffic's mix as `trail bench "
        "--length-mix chat` draws its requests (default %(default)s)",
    )
    evaluate.add_argument("--output", "-o", type=Path, help="report folder (default: COLLECTION/eval)")
    evaluate.set_defaults(handler=_eval)

    predictor = sub.add_parser("prompt-predictor", help="the prompt-only length predictor (MiniLM + head)")
    predictor_sub = predictor.add_subparsers(dest="prompt_predictor_command", required=True)
    ptrain = predictor_sub.add_parser("train", help="train it on a collection's prompts and answer lengths")
    ptrain.add_argument("collection", type=Path)
    ptrain.add_argument("--output", "-o", type=Path, required=True)
    _recipe_arguments(ptrain, lr=1e-3, hidden_units=256)
    ptrain.set_defaults(handler=_prompt_train)


def _run(work) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(work(), indent=2))
    return 0


def _train(args) -> int:
    from trail_scheduler.training.data import Collection
    from trail_scheduler.training.train import train_probe

    return _run(
        lambda: train_probe(
            args.collection, args.output, args.layer, _bins(args, Collection(args.collection)), _recipe(args)
        )
    )


def _sweep(args) -> int:
    from trail_scheduler.training.data import Collection
    from trail_scheduler.training.train import sweep

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    return _run(lambda: sweep(args.collection, layers, _bins(args, Collection(args.collection)), _recipe(args)))


def _eval(args) -> int:
    from trail_scheduler.training.evaluate import evaluate

    output = args.output or args.collection / "eval"
    return _run(
        lambda: evaluate(
            args.collection,
            args.probe,
            args.prompt_predictor,
            output,
            args.split,
            SchedulerSettings(
                predict_every=args.predict_every,
                refinement_prior=args.refinement_prior,
                evidence_weight=args.evidence_weight,
                probe_ranks_after=args.probe_ranks_after,
            ),
            args.bursts,
            args.burst_size,
            args.slots,
            LENGTH_MIXES[args.length_mix],
        )
    )


def _prompt_train(args) -> int:
    from trail_scheduler.training.data import Collection
    from trail_scheduler.training.prompt_predictor import train_prompt_predictor

    return _run(
        lambda: train_prompt_predictor(
            args.collection, args.output, _bins(args, Collection(args.collection)), _recipe(args)
        )
    )
