"""``engine.extraArgs`` as trail serve and vLLM parse them: the flag table is vLLM's own,
every refused case really would reach something the operator owns (checked with the real
parsers), every accepted case parses and leaves the operator's settings alone, and the
CRD's CEL rule refuses every spelling of every owned flag while letting the others pass."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

import pytest
from conftest import REPO
from crd_validation import _cel_errors

from trail_operator import engine_flags, pod
from trail_operator.crd import openapi_schema
from trail_operator.engine_flags import OPERATOR_DESTS, TABLE, TABLE_FILE, USER_TRAIL_FLAGS, check_extra_args
from trail_operator.spec import SpecError, parse_spec

# (extraArgs, what the refusal says)
HOSTILE = [
    (["-tp", "4"], "sets tensor_parallel_size, which the operator owns: use spec.engine.tensorParallelSize"),
    (["--tensor_parallel_size=4"], "sets tensor_parallel_size"),
    (["--tensor-parallel-size=4"], "sets tensor_parallel_size"),
    (["--device-memory-utilization", "0.5"], "sets gpu_memory_utilization"),
    (["--tensor-parallel", "2"], "abbreviates --tensor-parallel-size: spell the flag in full"),
    (["-t", "2"], "abbreviates -tp"),
    (["--admin-p=9000"], "abbreviates --admin-port"),
    (["--sched=x"], "abbreviates --scheduler-cls, --scheduler-config"),
    (["--scheduler_cls", "vllm.v1.core.sched.scheduler.Scheduler"], "sets scheduler_cls, which trail serve sets"),
    (["--additional-config.trail.settings.c=5"], "sets additional_config"),
    (["--policy=fcfs"], "sets policy, which the operator owns: use spec.scheduler.policy"),
    (["--predict_every", "2"], "use spec.scheduler.predictEvery"),
    (["--probe_layer", "3"], "trail serve takes only the spelling --probe-layer"),
    (["--config", "/etc/passwd.yaml"], "reads more flags from a file"),
    (["-h"], "sets help"),
    (["other-model"], "'other-model': a value that follows no flag taking it"),
    (["--", "x"], "'--' ends the options"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-tp4"], "unrecognized arguments: -tp4"),
    (["--enforce-eager=1"], "argument --enforce-eager: ignored explicit argument '1'"),
    (["--max-model-len"], "sets max_model_len"),
    (["--api-key", "a", "--port", "9000"], "[2] '--port': sets port"),
    (["--model=other"], "sets model"),
    (["--served-model-name", "x"], "use spec.model.servedModelName"),
    (["--enforce-eager", "x"], "[1] 'x': a value that follows no flag"),
]
ALLOWED = [
    ["--enforce-eager"],
    ["--probe-layer", "12"],
    ["--prompt-predictor", "none"],
    ["--max-num-batched-tokens", "8192", "--enable-prefix-caching"],
    ["--enable_chunked_prefill"],
    ["--no-enable-prefix-caching", "--seed", "-1"],
    ["--api-key", "a", "b", "--enforce-eager"],
    ["--hf-token", "--enforce-eager"],
    ["-O3"],
    ["-O", "2"],
    ["-q=fp8"],
]


@pytest.fixture(scope="module")
def generator() -> Any:
    spec = importlib.util.spec_from_file_location("engine_flags_table", REPO / "tools" / "engine_flags_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_the_installed_parsers(generator) -> None:
    """Regenerated from trail serve's and the installed vLLM's parsers: equal to the committed file."""
    assert generator.dump(generator.table()) == TABLE_FILE.read_text(), "run: python tools/engine_flags_table.py"


@pytest.fixture(scope="module")
def real_parse(generator) -> Any:
    """extraArgs through trail serve's parser, then vLLM's, after the operator's own flags;
    the destinations that end up differing from the operator's line alone (None: refused)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from trail_scheduler.server.serve import add_arguments

    operator_line = pod.server_args(parse_spec({"model": {"bundled": True}}))

    def parse(argv: list[str]) -> dict[str, Any] | None:
        trail = argparse.ArgumentParser(prog="trail serve")
        add_arguments(trail)
        try:
            own, rest = trail.parse_known_args(argv)
            engine = make_arg_parser(FlexibleArgumentParser(prog="trail serve"))
            parsed = vars(engine.parse_args(["--model", "m", *rest]))
            return parsed | {f"trail.{key}": value for key, value in vars(own).items()}
        except (SystemExit, Exception):
            return None

    base = parse(operator_line)
    assert base is not None

    def changed(extra: list[str]) -> set[str] | None:
        parsed = parse([*operator_line, *extra])
        return None if parsed is None else {k for k in parsed if parsed[k] != base.get(k)}

    return changed


def _operator_dest(dest: str) -> bool:
    user = {TABLE["trail_serve"][flag][0] for flag in USER_TRAIL_FLAGS}
    if dest.startswith("trail."):
        return dest.removeprefix("trail.") not in user
    return dest in OPERATOR_DESTS or dest in TABLE["trail_engine_dests"]


@pytest.mark.parametrize(("args", "reason"), HOSTILE, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_hostile_args_are_refused_with_the_reason(args, reason, real_parse) -> None:
    problems = check_extra_args(args)
    assert any(reason in p for p in problems), problems
    # ...and each is really hostile: the real parsers refuse it or it reaches what the operator owns
    changed = real_parse(args)
    assert changed is None or any(_operator_dest(dest) for dest in changed), changed


@pytest.mark.parametrize("args", ALLOWED, ids=" ".join)
def test_accepted_args_parse_and_leave_the_operators_flags_alone(args, real_parse) -> None:
    assert check_extra_args(args) == []
    changed = real_parse(args)
    assert changed is not None, "vLLM refuses what the check accepted"
    assert not [dest for dest in changed if _operator_dest(dest)]


def test_everything_the_operator_writes_is_owned() -> None:
    """The builder's flags (every optional spec field set) are each refused in extraArgs."""
    spec = parse_spec(
        {
            "model": {"huggingFace": {"id": "org/m", "revision": "main"}, "servedModelName": "m"},
            "engine": {"maxModelLen": 64, "gpuMemoryUtilization": 0.5, "maxNumSeqs": 2, "dtype": "auto"},
        }
    )
    line = pod.server_args(spec)
    flags = [(flag, value) for flag, value in zip(line, line[1:]) if flag.startswith("--")]
    assert len(flags) == 13
    for flag, value in flags:
        assert "which the operator owns" in " ".join(check_extra_args([flag, value])), flag


def test_spec_parsing_uses_the_check() -> None:
    with pytest.raises(SpecError, match=r"spec\.engine\.extraArgs: \[0\] '-tp': sets tensor_parallel_size"):
        parse_spec({"model": {"bundled": True}, "engine": {"extraArgs": ["-tp", "2"]}})


def _spellings(option: str) -> list[str]:
    """The spellings of one owned option vLLM or trail serve would take as it."""
    under = option[:2] + option[2:].replace("-", "_") if option.startswith("--") else option
    return [option, under, f"{option}=1", f"{under}=1", f"{option}.field=1"]


def _item_rule_errors(args: list[str]) -> list[str]:
    items = openapi_schema()["properties"]["spec"]["properties"]["engine"]["properties"]["extraArgs"]["items"]
    return [error for i, arg in enumerate(args) for error in _cel_errors(items, arg, f"[{i}]")]


def test_the_crd_refuses_every_spelling_of_every_owned_flag() -> None:
    owned = _owned_options()
    assert {"-tp", "--tensor-parallel-size", "--device-memory-utilization", "--scheduler-cls", "--policy"} <= set(owned)
    spellings = [s for option in owned for s in _spellings(option)]
    assert len(_item_rule_errors(spellings)) == len(spellings)


def test_the_crd_lets_every_other_flag_through() -> None:
    others = [o for table in ("trail_serve", "vllm") for o in TABLE[table] if o not in _owned_options()]
    assert len(others) > 300
    assert _item_rule_errors(others) == []


def _owned_options() -> set[str]:
    return {
        o
        for table, trail in (("trail_serve", True), ("vllm", False))
        for o in TABLE[table]
        if engine_flags._owned(engine_flags._Flag(o, *TABLE[table][o], trail)) is not None
    }
