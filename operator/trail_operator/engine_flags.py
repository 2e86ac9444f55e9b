"""``engine.extraArgs`` checked the way ``trail serve`` and vLLM will parse them.

The pod runs ``trail serve <the operator's flags> <extraArgs>``: ``trail serve``'s parser
takes its own flags (anywhere in the line) and hands the rest to vLLM's
``FlexibleArgumentParser``, which also accepts underscores for dashes, ``--flag=value``,
short aliases (``-tp``), abbreviations (``--tensor-parallel``), dotted JSON fields
(``--additional-config.trail.x``), ``-O3`` and a bare value as the model. So comparing
strings against a list of reserved flags lets aliases through. Instead each argument is
resolved to the destination it sets, through the table of both parsers' flags in
``engine_flags.json`` (generated from the parsers themselves by
``tools/engine_flags_table.py``; the operator image has no vLLM), and refused when:

- it is not a flag of either parser ("unrecognized arguments", as argparse says), or only
  an abbreviation of one (argparse would guess; an abbreviation of ``--scheduler-cls``
  must not slip past);
- it sets a destination the operator owns (:data:`OPERATOR_DESTS`, and what ``trail
  serve`` sets on vLLM itself), in any spelling;
- it is one of ``trail serve``'s own flags other than :data:`USER_TRAIL_FLAGS`, or one of
  those spelled otherwise than exactly (``trail serve``'s parser would not take it);
- a value stands where no flag takes one (vLLM would read it as the model), or a flag
  misses its value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from trail_contract.settings import SchedulerSettings

TABLE_FILE = Path(__file__).with_name("engine_flags.json")
TABLE: dict[str, Any] = json.loads(TABLE_FILE.read_text())

# vLLM destinations the operator sets (trail_operator.pod.server_args writes them,
# the model also as vLLM's positional model_tag), and what to do instead.
OPERATOR_DESTS: dict[str, str] = {
    "model": "use spec.model",
    "model_tag": "use spec.model",
    "revision": "use spec.model.huggingFace.revision",
    "served_model_name": "use spec.model.servedModelName",
    "port": "the Service and the probes point at the operator's",
    "tensor_parallel_size": "use spec.engine.tensorParallelSize",
    "max_model_len": "use spec.engine.maxModelLen",
    "gpu_memory_utilization": "use spec.engine.gpuMemoryUtilization",
    "max_num_seqs": "use spec.engine.maxNumSeqs",
    "dtype": "use spec.engine.dtype",
    "config": "it reads more flags from a file that no check sees; list them in extraArgs",
}
# `trail serve` flags a spec has no field for; every other one the operator sets (ports,
# token, model, the settings file, the settings and the probe: spec.scheduler).
USER_TRAIL_FLAGS = ("--probe-layer", "--prompt-predictor")
SCHEDULER_DESTS = {*SchedulerSettings.model_fields, "probe"}  # trail serve flags for spec.scheduler

_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's: a value, not a flag
_OPTIMIZATION = "--optimization-level"  # what vLLM rewrites -O<level> into


@dataclass(frozen=True)
class _Flag:
    option: str  # the spelling in the table
    dest: str
    nargs: int | str  # 0, 1, '?', '*' or '+'
    trail: bool  # trail serve's own (its parser takes it before vLLM's sees it)


def _table_flag(option: str, trail: bool) -> _Flag | None:
    entry = TABLE["trail_serve" if trail else "vllm"].get(option)
    return None if entry is None else _Flag(option, entry[0], entry[1], trail)


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def _normalised(key: str) -> str:
    """vLLM's spelling of a ``--`` key: underscores to dashes up to the first '.'."""
    head, dot, rest = key[2:].partition(".")
    return "--" + head.replace("_", "-") + dot + rest


def _resolve(token: str, following: str | None) -> tuple[_Flag | None, str | None, bool, str | None]:
    """(flag, explicit value, dotted, problem) for a token that looks like a flag."""
    if token == "--":
        return None, None, False, "'--' ends the options: vLLM would read what follows as the model"
    if token.startswith("-O") and not token.startswith("--"):  # vLLM's -O3, -O=3, -O 3
        level = token[3:] if token[2:3] == "=" else token[2:]
        if level or following in {"0", "1", "2", "3"}:
            return _table_flag(_OPTIMIZATION, False), level or None, False, None
    key, equals, value = token.partition("=")
    explicit = value if equals else None
    exact = _table_flag(key, True)
    if exact is not None:
        return exact, explicit, False, None
    if key.startswith("--"):
        key = _normalised(key)
    base, dot, _ = key.partition(".")
    flag = _table_flag(base, True) if base.startswith("--") else None
    if flag is not None:  # vLLM's spelling of a trail serve flag, which trail serve's parser would not take
        return flag, explicit, bool(dot), _owned(flag) or f"trail serve takes only the spelling {flag.option}"
    flag = _table_flag(base, False)
    if flag is None and not base.startswith("--") and len(base) > 2:  # argparse's -n4: -n with 4
        flag = _table_flag(base[:2], True) or _table_flag(base[:2], False)
        if flag is not None:
            return flag, base[2:], False, None
    if flag is not None:
        return flag, explicit, bool(dot), None
    spelled = {token.partition("=")[0], base}
    near = sorted({o for table in ("trail_serve", "vllm") for o in TABLE[table] for s in spelled if o.startswith(s)})
    if near:
        return None, None, False, f"abbreviates {', '.join(near)}: spell the flag in full"
    return None, None, False, f"unrecognized arguments: {token}"


def _owned(flag: _Flag) -> str | None:
    """Why the operator owns what ``flag`` sets (None: the user may set it)."""
    if flag.trail and flag.option in USER_TRAIL_FLAGS:
        return None
    if not flag.trail and flag.dest in TABLE["trail_engine_dests"]:
        return f"sets {flag.dest}, which trail serve sets to plug TRAIL into vLLM"
    if not flag.trail and flag.dest not in OPERATOR_DESTS:
        return None
    hint = OPERATOR_DESTS.get(flag.dest)
    if flag.dest in SCHEDULER_DESTS:
        hint = f"use spec.scheduler.{to_camel(flag.dest)}"
    return f"sets {flag.dest}, which the operator owns" + (f": {hint}" if hint else "")


def check_extra_args(args: Sequence[str]) -> list[str]:
    """Every problem with ``engine.extraArgs`` as ``[index] 'arg': reason`` (empty: fine)."""
    problems: list[str] = []
    i = 0
    while i < len(args):
        token, start = args[i], i
        i += 1
        if not _looks_like_flag(token):
            problems.append(f"[{start}] '{token}': a value that follows no flag taking it (vLLM would read the model)")
            continue
        following = args[i] if i < len(args) else None
        flag, explicit, dotted, problem = _resolve(token, following)
        if flag is not None and problem is None:
            problem = _owned(flag)
        if flag is not None:
            i, missing = _take_values(flag, explicit, dotted, args, i)
            problem = problem or missing
        else:  # its values, if any, are part of the same problem
            while i < len(args) and not _looks_like_flag(args[i]):
                i += 1
        if problem is not None:
            problems.append(f"[{start}] '{token}': {problem}")
    return problems


def _take_values(
    flag: _Flag, explicit: str | None, dotted: bool, args: Sequence[str], i: int
) -> tuple[int, str | None]:
    """The index after ``flag``'s values, and what is wrong with them (argparse's words)."""
    nargs = 1 if dotted else flag.nargs  # a dotted field always takes one value (JSON)
    if explicit is not None:
        if nargs == 0:
            return i, f"argument {flag.option}: ignored explicit argument '{explicit}'"
        return i, None
    if nargs == 0:
        return i, None
    start = i
    while i < len(args) and not _looks_like_flag(args[i]) and (nargs in ("*", "+") or i == start):
        i += 1
    if i == start and nargs in (1, "+"):
        return i, f"argument {flag.option}: expected {'one argument' if nargs == 1 else 'at least one argument'}"
    return i, None
