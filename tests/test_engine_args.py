"""One way to build a TRAIL engine: what trail serve, collection and the stock baseline pass to vLLM."""

import pytest
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

from trail_contract.errors import TrailError
from trail_scheduler.server.serve import vllm_argv
from trail_scheduler.vllm.engine_config import SCHEDULER_CLS, TrailEngineConfig, engine_args

TRAIL_FLAGS = ("--scheduler-cls", "--worker-cls", "--scheduling-policy", "--additional-config")


def parse(argv: list[str]):
    return make_arg_parser(FlexibleArgumentParser(prog="trail serve")).parse_args(argv)


def test_trail_serve_passes_the_engine_args_and_keeps_the_users_own() -> None:
    config = TrailEngineConfig(probe_layer=7)
    args = parse(vllm_argv(None, 8123, ["--dtype", "bfloat16", "--max-num-seqs", "3"], config))
    expected = engine_args(None, config)
    assert args.model == expected["model"] and args.port == 8123
    assert args.scheduler_cls == SCHEDULER_CLS and args.scheduling_policy == "priority"
    assert args.additional_config == config.to_additional_config()
    assert args.dtype == "bfloat16"  # the user's value, not the CPU default
    assert args.max_num_seqs == 3
    assert args.max_model_len == expected["max_model_len"]


def test_the_stock_baseline_is_the_same_engine_without_trail() -> None:
    stock, trail = vllm_argv(None, 8123, [], None), vllm_argv(None, 8123, [], TrailEngineConfig())
    assert trail[: len(stock)] == stock
    assert trail[len(stock) :: 2] == list(TRAIL_FLAGS)


@pytest.mark.parametrize("flag", TRAIL_FLAGS)
def test_a_user_cannot_replace_what_trail_sets(flag) -> None:
    with pytest.raises(TrailError, match=f"sets {flag} itself"):
        vllm_argv(None, 8123, [f"{flag}=x"], TrailEngineConfig())
