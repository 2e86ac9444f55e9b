#!/usr/bin/env python3
"""Write operator/trail_operator/engine_flags.json: every flag `trail serve` and vLLM accept.

Usage: python tools/engine_flags_table.py   (in the dev environment, where vLLM is installed)

The operator checks an LLMServer's ``engine.extraArgs`` the way `trail serve` and vLLM
will parse them, but its image has no vLLM: it reads this table instead. The table is
read from the parsers themselves (``trail serve``'s own, then vLLM's
``make_arg_parser(FlexibleArgumentParser())``, as ``trail serve`` builds it): every
option string with its aliases, the destination it sets and how many values it takes.
Building vLLM's parser imports vLLM but starts no engine. Run this after bumping vLLM or
changing `trail serve`'s flags; tests/operator/test_engine_flags.py regenerates the table
and fails while the committed file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "operator" / "trail_operator" / "engine_flags.json"


def _options(parser: argparse.ArgumentParser) -> dict[str, list[Any]]:
    """option string -> [dest, nargs]; nargs 0 (a switch), 1, '?', '*' or '+'."""
    return {
        option: [action.dest, 1 if action.nargs is None else action.nargs]
        for action in parser._actions
        for option in action.option_strings
    }


def table() -> dict[str, Any]:
    import vllm
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from trail_scheduler.server.serve import add_arguments
    from trail_scheduler.vllm.engine_config import TRAIL_ENGINE_ARGS

    trail = argparse.ArgumentParser(prog="trail serve")
    add_arguments(trail)
    engine = make_arg_parser(FlexibleArgumentParser(prog="trail serve"))
    return {
        "generated_by": "python tools/engine_flags_table.py",
        "vllm_version": vllm.__version__,
        "trail_serve": _options(trail),
        "trail_engine_dests": sorted(TRAIL_ENGINE_ARGS),
        "vllm_positionals": [action.dest for action in engine._actions if not action.option_strings],
        "vllm": _options(engine),
    }


def dump(data: dict[str, Any]) -> str:
    """JSON with one line per flag, so a vLLM bump reads as a short diff."""
    lines = []
    for key, value in data.items():
        if isinstance(value, dict):
            entries = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(value.items()))
            lines.append(f"  {json.dumps(key)}: {{\n{entries}\n  }}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main() -> int:
    OUT.write_text(dump(table()))
    print(f"{OUT}: {len(json.loads(OUT.read_text())['vllm'])} vLLM option strings", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
