"""The ``trail`` command. Subcommands import their part lazily so each stays fast.

Other packages add subcommands through the ``trail.commands`` entry points (a function
that registers its parsers), so the engine package never imports the operator.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

COMMANDS_GROUP = "trail.commands"


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="the bundled SmolLM2-135M-Instruct model")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    prepare = model_sub.add_parser(
        "prepare", help="convert the bundled GGUF model into a Hugging Face checkpoint (once)"
    )
    prepare.set_defaults(handler=_model_prepare)


def _model_prepare(args: argparse.Namespace) -> int:
    from trail_scheduler.assets import prepare_bundled_model

    path = prepare_bundled_model()
    print(path)
    return 0


def _add_probe_commands(sub: argparse._SubParsersAction) -> None:
    """``probe inspect|import`` here; collect/train/sweep/eval and ``prompt-predictor`` from the training package."""
    probe = sub.add_parser("probe", help="length probes: collect, train, sweep, eval, inspect, import")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True)
    inspect = probe_sub.add_parser("inspect", help="validate a probe file and print its metadata")
    inspect.add_argument("file")
    inspect.set_defaults(handler=_probe_inspect)
    imported = probe_sub.add_parser(
        "import",
        help="convert a probe released by the TRAIL authors (PyTorch state dict + config.json) into a probe file",
        description="Reads SOURCE with torch.load(weights_only=True): tensors only, never pickled code.",
    )
    imported.add_argument("source", help="the authors' model.pt (downloaded yourself)")
    imported.add_argument("--config", required=True, help="the authors' config.json next to it")
    imported.add_argument("--out", required=True, help="probe file to write (.safetensors)")
    imported.add_argument("--model", help="the LLM it reads (default: known for the authors' release)")
    imported.add_argument(
        "--layer", type=int, help="override the layer (default: the config's probe_layer_idx + 1, this project's index)"
    )
    imported.add_argument("--origin", help="where the file came from (recorded; known for the authors' release)")
    imported.set_defaults(handler=_probe_import)
    from trail_scheduler.training.cli import add_probe_commands, add_training_commands

    add_probe_commands(probe_sub)
    add_training_commands(probe_sub, sub)


def _probe_inspect(args: argparse.Namespace) -> int:
    import json

    from trail_scheduler.probe import load_probe

    print(json.dumps(load_probe(args.file).describe(), indent=2))
    return 0


def _probe_import(args: argparse.Namespace) -> int:
    from trail_scheduler.probe.importer import import_probe

    probe = import_probe(args.source, args.config, args.out, model=args.model, layer=args.layer, origin=args.origin)
    source = probe.training["source"]
    print(
        f"{args.out}: {probe.model}, layer {probe.layer}, {probe.hidden_size}->{probe.hidden_units}->"
        f"{probe.bins.count} bins over 0-{probe.bins.edges[-1]:g}, from {source.get('repository', args.source)}"
    )
    print(f"sha256 {probe.sha256}")
    return 0


def _add_serve_command(sub: argparse._SubParsersAction) -> None:
    from trail_scheduler.server.serve import add_arguments

    serve = sub.add_parser(
        "serve",
        help="serve a model with the TRAIL scheduler (vLLM's OpenAI API + admin API + metrics)",
        description="Any argument not listed here is passed to vLLM's engine (e.g. --max-num-seqs 8).",
        allow_abbrev=False,  # `--admin-p 9` is not --admin-port: a prefix would reach past the flags' checks
    )
    add_arguments(serve)
    serve.set_defaults(handler=_serve, accepts_extra_args=True)


def _serve(args: argparse.Namespace) -> int:
    from trail_scheduler.server.serve import run

    return run(args)


def _add_bench_command(sub: argparse._SubParsersAction) -> None:
    from trail_scheduler.bench.config import add_arguments

    bench = sub.add_parser(
        "bench",
        help="measure FCFS, SJF, TRAIL and TRAIL+ end to end on the real engine (report, CSV, plots)",
    )
    add_arguments(bench)
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from trail_scheduler.bench.runner import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trail", description="TRAIL: length-aware LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_command(sub)
    _add_bench_command(sub)
    _add_model_commands(sub)
    _add_probe_commands(sub)
    for command in entry_points(group=COMMANDS_GROUP):  # the operator's, without importing it from here
        command.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    from trail_contract.errors import TrailError

    try:
        return int(args.handler(args) or 0)
    except TrailError as error:  # the one place a library error becomes an exit status
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
