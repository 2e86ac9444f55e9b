"""End to end on the real engine and model: collect (and resume) → sweep → train →
prompt predictor → eval → ``trail serve`` with the results; plus bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trail_scheduler.bench.servers import start_trail_serve
from trail_scheduler.probe import load_probe

TRAIL = str(Path(sys.executable).with_name("trail"))
pytestmark = pytest.mark.engine


def last_json(stdout: str) -> dict:
    """The JSON summary a command prints last (vLLM logs to stdout around it)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return json.loads("\n".join(lines[start : end + 1]))


def trail(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([TRAIL, *args], capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def collect(folder: Path, limit: int) -> dict:
    # Real ShareGPT first turns (a small pool), two layers, short answers.
    out = trail(
        "probe",
        "collect",
        str(folder),
        "--pool",
        "40",
        "--benchmark-size",
        "10",
        "--limit",
        str(limit),
        "--layers",
        "4,10",
        "--max-tokens",
        "24",
        "--validation-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
        "--max-num-seqs",
        "8",
        "--shard-size",
        "2",
        "--max-prompt-tokens",
        "512",
    ).stdout
    return last_json(out)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("collect") / "c"
    first = collect(folder, 5)  # an interrupted run, as far as the next run can tell
    assert first["collected"] == 5 and first["skipped_done"] == 0
    (folder / "shards" / ".shard-crashed-00000.safetensors.tmp").write_bytes(b"half a shard")
    second = collect(folder, 12)
    assert second["skipped_done"] == 5 and second["requested"] == 7 and second["collected"] == 7
    return folder


def test_collection_is_resumable_and_split_by_prompt(collection):
    from trail_scheduler.training.data import Collection

    data = Collection(collection)
    ids = [i for _, meta in data.shards() for i in meta["ids"]]
    assert len(ids) == len(set(ids)) == 12  # each prompt collected once across both runs
    split = data.split["ids"]
    assert set(ids) <= set(split["train"]) | set(split["validation"]) | set(split["test"])
    assert not set(ids) & set(split["benchmark"])
    bench = [json.loads(line) for line in (collection / "benchmark.jsonl").read_text().splitlines()]
    assert {b["id"] for b in bench} == set(split["benchmark"]) and all(b["prompt"] for b in bench)
    again = collect(collection, 12)  # nothing left: no engine is started
    assert again == {**again, "requested": 0, "collected": 0, "skipped_done": 12}
    info = json.loads((collection / "collection.json").read_text())
    assert info["layers"] == [4, 10] and info["sampling"]["max_tokens"] == 24
    assert [run["collected"] for run in info["runs"]] == [5, 7]


def test_train_eval_and_serve_with_the_result(collection, tmp_path):
    sweep = last_json(trail("probe", "sweep", str(collection), "--epochs", "1").stdout)
    assert set(sweep["layers"]) == {"4", "10"} and (collection / "sweep" / "sweep.png").stat().st_size > 0
    probe_path, predictor_path = tmp_path / "probe.safetensors", tmp_path / "prompt.safetensors"
    trained = last_json(trail("probe", "train", str(collection), "-o", str(probe_path), "--epochs", "1").stdout)
    probe = load_probe(probe_path)
    assert probe.layer == sweep["best_layer"] == trained["layer"]  # the sweep picks the layer
    assert probe.training["recipe"]["lr"] == 0.01 and probe.training["data"]["train_requests"] > 0
    trail("prompt-predictor", "train", str(collection), "-o", str(predictor_path), "--epochs", "1")
    report = last_json(
        trail(
            "probe", "eval", str(collection), "--probe", str(probe_path), "--prompt-predictor", str(predictor_path)
        ).stdout
    )
    assert report["requests"] >= 1 and set(report["mae_tokens"]) == {"prompt", "first", "refined"}
    assert all(0 <= v < 100 for v in report["mae_tokens"].values())
    simulated = report["simulated_bursts"]
    assert simulated["size"] == min(32, report["requests"]) and simulated["trail+"]["mean_latency_ratio"] <= 1.0
    assert (collection / "eval" / "heatmap.png").stat().st_size > 0
    assert json.loads((collection / "eval" / "eval.json").read_text())["mae_tokens"] == report["mae_tokens"]

    from trail_scheduler.probe.prompt import load_prompt_predictor

    server = start_trail_serve(
        tmp_path, "--probe", str(probe_path), "--prompt-predictor", str(predictor_path), "--max-num-seqs", "2"
    )
    try:
        assert server.config().probe.sha256 == probe.sha256
        messages = [{"role": "user", "content": "Name a colour."}]
        reply = httpx.post(
            f"{server.base}/v1/chat/completions",
            timeout=120,
            json={
                "model": "SmolLM2-135M-Instruct",
                "messages": messages,
                "max_tokens": 1,
                "ignore_eos": True,
            },
        )
        assert reply.status_code == 200, reply.text
        # The prompt predictor ran in the API server on the prompt the engine received.
        from transformers import AutoTokenizer

        from trail_scheduler.assets import bundled_model_path

        tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = abs(load_prompt_predictor(predictor_path).estimate_one(rendered) - 1)
        deadline = time.monotonic() + 30
        while (error := server.metric("trail_prediction_abs_error_tokens_sum", stage="prompt")) == 0:
            assert time.monotonic() < deadline, "no prompt-stage error was recorded"
            time.sleep(1)
        assert error == pytest.approx(expected, abs=0.5)
        assert abs(error - (230.4 - 1)) > 1  # not the tracker's fallback for requests without an estimate
    finally:
        server.stop()


def test_eval_refuses_a_probe_for_another_hidden_size(collection, tmp_path):
    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    probe = tmp_path / "small.safetensors"
    save_probe(LengthProbe(64, 10), LengthBins.uniform(), probe, model="other", layer=4, training={})
    result = trail(
        "probe", "eval", str(collection), "--probe", str(probe), "--prompt-predictor", str(probe), check=False
    )
    assert result.returncode == 2
    assert "the probe reads hidden size 64, the collection's model has 576" in result.stderr


def test_collect_refuses_bad_inputs_before_starting_an_engine(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = trail("probe", "collect", str(tmp_path / "a"), "--prompts", str(empty), check=False)
    assert result.returncode == 2 and "error: no prompts in" in result.stderr
    result = trail("probe", "collect", str(tmp_path / "b"), "--layers", "4,31", "--pool", "5", check=False)
    assert result.returncode == 2
    assert "layer(s) [31] out of range: this model has 30 layers, valid indices 0..29" in result.stderr
    assert "EngineCore" not in result.stderr  # refused before any engine started


def test_serve_refuses_a_probe_given_as_prompt_predictor(tmp_path):
    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    probe = tmp_path / "probe.safetensors"
    save_probe(LengthProbe(576, 10), LengthBins.uniform(), probe, model="m", layer=10, training={})
    result = trail("serve", "--prompt-predictor", str(probe), "--port", "0", check=False)
    assert result.returncode != 0
    assert "error: --prompt-predictor:" in result.stderr and "is not a prompt predictor" in result.stderr
