"""``trail serve``'s own flags: no abbreviations, and the probe-source flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from trail_scheduler.cli import build_parser
from trail_scheduler.server.serve import ServeError, probe_sources


def serve_args(*argv: str):
    args, extra = build_parser().parse_known_args(["serve", *argv])
    return args, extra


@pytest.mark.parametrize(("argv", "port"), [(["--admin-p", "9"], 8001), (["--admin-p=9"], 8001)])
def test_an_abbreviated_flag_is_not_taken_for_trail_serves_own(argv, port):
    """It goes on to vLLM's parser (no abbreviations there either), which refuses it."""
    args, extra = serve_args(*argv)
    assert (args.admin_port, extra) == (port, argv)


def test_the_full_flag_works():
    args, extra = serve_args("--admin-port", "9", "--scheduler-config=x.json")
    assert (args.admin_port, args.scheduler_config, extra) == (9, "x.json", [])


def test_probe_source_flags(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    args, _ = serve_args(
        "--probe-dir", str(tmp_path / "link"), "--probe-dir", "/srv/probes/",
        "--probe-host", "Probes.Example.", "--probe-deadline", "5",
    )  # fmt: skip
    sources = probe_sources(args)
    assert sources.dirs == (tmp_path / "real", Path("/srv/probes"))
    assert (sources.hosts, sources.deadline) == (("probes.example",), 5.0)


@pytest.mark.parametrize("deadline", ["0", "-1", "nan"])
def test_a_deadline_must_be_positive(deadline):
    args, _ = serve_args("--probe-deadline", deadline)
    with pytest.raises(ServeError, match="--probe-deadline must be a positive number"):
        probe_sources(args)


def test_without_probe_flags_files_are_off_and_any_host_goes():
    sources = probe_sources(serve_args()[0])
    assert (sources.dirs, sources.hosts, sources.deadline) == ((), (), 60.0)


@pytest.mark.parametrize(("value", "enabled"), [("true", True), ("false", False)])
def test_a_switch_setting_takes_true_or_false(value, enabled):
    args, extra = serve_args("--prediction-guard", value)
    assert (args.prediction_guard, extra) == (enabled, [])


def test_a_switch_setting_refuses_anything_else():
    with pytest.raises(SystemExit):
        serve_args("--prediction-guard", "yes")
