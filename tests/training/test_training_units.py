"""The training pieces that need no engine: shard contents and label convention, split
rules, input validation, and the predictor file checks."""

from __future__ import annotations

import json

import pytest
import torch

from trail_scheduler.assets import PromptFileError, read_prompt_file
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, ProbeFileError, save_probe
from trail_scheduler.probe.prompt import load_prompt_predictor
from trail_scheduler.training.collect import CollectOptions, assign_splits, read_prompts, resolve_layers
from trail_scheduler.training.data import Collection, CollectionError
from trail_scheduler.vllm.collector import RequestCollector


def _states(rows: int, base: float) -> torch.Tensor:
    """[rows, 2 layers, 4]: row r of layer l holds base + r + 100*l (so rows are traceable)."""
    r = torch.arange(rows, dtype=torch.float32)[:, None, None]
    layer = torch.tensor([0.0, 100.0])[None, :, None]
    return (base + r + layer).expand(rows, 2, 4).clone()


def test_collector_handles_chunked_prefill_decode_and_recompute(tmp_path):
    collector = RequestCollector(tmp_path, layers=(3, 7), hidden_size=4, shard_size=10)
    prompt_len = 5
    # Prefill in two chunks (3 + 2 prompt rows); the second chunk completes the prompt.
    collector.observe("a", "id-a", _states(3, 0), start=0, prompt_len=prompt_len)
    collector.observe("a", "id-a", _states(2, 3), start=3, prompt_len=prompt_len)
    # Decode: output tokens 0 and 1 fed back (positions 5 and 6).
    collector.observe("a", "id-a", _states(1, 50), start=5, prompt_len=prompt_len)
    collector.observe("a", "id-a", _states(1, 51), start=6, prompt_len=prompt_len)
    # Preempted and recomputed from 0: prompt + the two outputs again, then one more decode.
    collector.observe("a", "id-a", _states(7, 0), start=0, prompt_len=prompt_len)
    collector.observe("a", "id-a", _states(1, 60), start=7, prompt_len=prompt_len)
    # A request whose prompt never completed is not written.
    collector.observe("b", "id-b", _states(2, 0), start=0, prompt_len=9)
    collector.finish(["a", "b"])
    assert collector.flush() and not collector.active
    (path,) = sorted((tmp_path / "shards").glob("shard-*.safetensors"))
    from safetensors.torch import load_file

    shard = load_file(path)
    assert shard["lengths"].tolist() == [4]  # three outputs fed back + the last one sampled
    assert shard["prompt_mean"].shape == (2, 1, 4)
    assert shard["prompt_mean"][0, 0, 0].item() == pytest.approx(2.0)  # mean of 0..4
    assert shard["prompt_mean"][1, 0, 0].item() == pytest.approx(102.0)  # the second layer
    assert shard["prompt_last"][:, 0, 0].tolist() == [4.0, 104.0]  # the last prompt row, per layer
    assert shard["tokens"][0, :, 0].tolist() == [5.0, 6.0, 60.0]  # recomputed outputs, then decode
    assert shard["offsets"].tolist() == [0, 3]


def test_examples_follow_the_engine_label_convention(tmp_path):
    collector = RequestCollector(tmp_path / "c", layers=(3, 7), hidden_size=4, shard_size=10)
    collector.observe("a", "x", _states(2, 0), start=0, prompt_len=2)
    for j in range(3):
        collector.observe("a", "x", _states(1, 10 + j), start=2 + j, prompt_len=2)
    collector.flush(everything=True)
    directory = tmp_path / "c"
    (directory / "collection.json").write_text(json.dumps({"layers": [3, 7], "hidden_size": 4}))
    (directory / "split.json").write_text(json.dumps({"seed": 0, "ids": {"train": ["x"]}}))
    assert Collection(directory).lengths() == {"x": 4}
    states = Collection(directory).load(7, "train")
    x, labels, remaining = states.examples(LengthBins.uniform(4, 8))
    # L = 4: the prompt mean predicts L-1 = 3 remaining; output token j predicts L-j-2.
    assert remaining.tolist() == [3.0, 2.0, 1.0, 0.0]
    assert labels.tolist() == [1, 1, 0, 0]
    assert x[:, 0].tolist() == [100.5, 110.0, 111.0, 112.0]  # layer 7 (+100), prompt mean of 0 and 1
    last, _, _ = Collection(directory).load(7, "train", prompt_reading="last").examples(LengthBins.uniform(4, 8))
    assert last[:, 0].tolist() == [101.0, 110.0, 111.0, 112.0]  # the last prompt row instead of the mean
    with pytest.raises(CollectionError, match="layer 5 was not collected"):
        Collection(directory).load(5, "train")


def test_shards_from_before_the_last_prompt_state_say_how_to_go_on(tmp_path):
    from safetensors.torch import load_file, save_file

    collector = RequestCollector(tmp_path, layers=(3,), hidden_size=4, shard_size=10)
    collector.observe("a", "x", torch.zeros(3, 1, 4), start=0, prompt_len=2)
    (path,) = collector.flush(everything=True)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    del tensors["prompt_last"]  # as format 1 wrote them
    save_file(tensors, path, metadata=metadata)
    (tmp_path / "collection.json").write_text(json.dumps({"layers": [3], "hidden_size": 4}))
    (tmp_path / "split.json").write_text(json.dumps({"seed": 0, "ids": {"train": ["x"]}}))
    assert len(Collection(tmp_path).load(3, "train").ids) == 1
    with pytest.raises(CollectionError, match="no 'prompt_last' states .* train with --prompt-reading mean"):
        Collection(tmp_path).load(3, "train", prompt_reading="last")


def test_layers_beyond_the_model_are_refused_with_the_valid_range():
    assert resolve_layers((12, 4, 4), 30) == (4, 12)
    assert resolve_layers("all", 3) == (0, 1, 2)
    assert 10 in resolve_layers("sweep", 30)
    with pytest.raises(
        CollectionError, match=r"layer\(s\) \[30\] out of range: this model has 30 layers, valid indices 0..29"
    ):
        resolve_layers((4, 30), 30)


def test_empty_or_malformed_prompt_files_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CollectionError, match="no prompts in .*empty.jsonl"):
        read_prompts(CollectOptions(output=tmp_path, prompts_file=empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: expected a JSON object with a non-empty \"prompt\""):
        read_prompts(CollectOptions(output=tmp_path, prompts_file=bad))
    with pytest.raises(PromptFileError, match="cannot read prompt file .*missing.jsonl"):
        read_prompts(CollectOptions(output=tmp_path, prompts_file=tmp_path / "missing.jsonl"))


def test_prompt_files_name_prompts_without_an_id_by_line_and_drop_repeats(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "  first  "}\n\n{"id": 7, "prompt": "second"}\n{"prompt": "first"}\n')
    assert read_prompt_file(path) == [("mine-1", "first"), ("7", "second"), ("mine-4", "first")]
    assert read_prompts(CollectOptions(output=tmp_path, prompts_file=path)) == [("mine-1", "first"), ("7", "second")]


def test_split_is_by_prompt_seeded_and_independent_of_the_limit(tmp_path):
    ids = [f"p{i}" for i in range(400)]
    options = CollectOptions(output=tmp_path, benchmark_size=50, seed=3)
    order, split = assign_splits(ids, options)
    again, same = assign_splits(list(reversed(ids))[::-1], options)
    assert (order, split) == (again, same)
    groups = [set(split[name]) for name in ("train", "validation", "test", "benchmark")]
    assert sum(map(len, groups)) == 400 and len(set().union(*groups)) == 400  # disjoint, complete
    assert len(groups[3]) == 50 and not groups[3] & set(order)  # benchmark prompts are never collected
    assert 20 <= len(groups[1]) <= 50 and 20 <= len(groups[2]) <= 50
    _, other_seed = assign_splits(ids, CollectOptions(output=tmp_path, benchmark_size=50, seed=4))
    assert other_seed["validation"] != split["validation"]


def test_short_requests_first_sets_the_benchmark_aside_from_them_and_collects_the_rest_first(tmp_path):
    ids = [f"p{i}" for i in range(400)]
    short = {f"p{i}" for i in range(0, 400, 4)}  # 100 of them
    options = CollectOptions(output=tmp_path, benchmark_size=30, seed=3, short_requests_first=True)
    order, split = assign_splits(ids, options, short)
    assert set(split["benchmark"]) <= short and len(split["benchmark"]) == 30
    assert set(order[:70]) == short - set(split["benchmark"]) and not set(order[70:]) & short
    # The split of each collected prompt is still its hash's: the same as without the option.
    _, plain = assign_splits(ids, CollectOptions(output=tmp_path, benchmark_size=30, seed=3))
    for name in ("train", "validation", "test"):
        assert set(split[name]) - set(plain["benchmark"]) == set(plain[name]) - set(split["benchmark"])


def test_a_probe_is_not_taken_for_a_prompt_predictor(tmp_path):
    path = tmp_path / "probe.safetensors"
    save_probe(LengthProbe(576, 10), LengthBins.uniform(), path, model="m", layer=10, training={})
    with pytest.raises(ProbeFileError, match="is not a prompt predictor"):
        load_prompt_predictor(path)
    other = tmp_path / "other-encoder.safetensors"
    save_probe(
        LengthProbe(768, 10),
        LengthBins.uniform(),
        other,
        model="m",
        layer=0,
        training={"kind": "prompt-predictor", "encoder": "bert-base"},
    )
    with pytest.raises(ProbeFileError, match="trained on 'bert-base' \\(768 dims\\)"):
        load_prompt_predictor(other)


def test_fit_folds_the_standardisation_into_the_saved_weights():
    from trail_scheduler.training.train import Recipe, fit, mae

    torch.manual_seed(0)
    bins = LengthBins.uniform(4, 8)
    x = torch.randn(256, 6) * torch.tensor([1, 1, 1, 1, 1, 300.0]) + 40  # one huge dimension, offset
    remaining = (x[:, 0] > 40).double() * 7  # the length is readable from dimension 0
    y = torch.tensor([bins.index(v) for v in remaining.tolist()])
    probe, history, best = fit(x, y, x, remaining, bins, Recipe(epochs=8, batch_size=32, hidden_units=16))
    assert best >= 1 and len(history) >= best
    assert mae(probe, x, remaining, bins) == pytest.approx(history[best - 1]["val_mae"], abs=0.01)
    assert mae(probe, x, remaining, bins) < 2.5  # an uninformed guess (the middle, ~4) is off by 3.5


def test_epochs_repeat_the_prompt_rows_to_their_share():
    from trail_scheduler.training.train import epoch_rows

    assert torch.equal(epoch_rows(1016, 16, None), torch.arange(1016))
    visits = epoch_rows(1016, 16, 0.5)
    counts = torch.bincount(visits, minlength=1016)
    assert (counts[16:] == 1).all() and (counts[:16] == counts[0]).all()  # tokens once, prompts alike
    assert counts[:16].sum() / len(visits) == pytest.approx(0.5, abs=0.01)
    assert (torch.bincount(epoch_rows(1016, 16, 0.001), minlength=1016) == 1).all()  # at least once each


def _prompt_and_token_rows(prompts: int, tokens: int, bins: LengthBins):
    """Prompt rows (first) read their length from dimension 1, token rows from dimension 0;
    dimension 2 tells the two kinds apart."""
    torch.manual_seed(0)
    x = torch.randn(prompts + tokens, 3)
    x[:prompts, 2], x[prompts:, 2] = 5.0, -5.0
    remaining = torch.cat([(x[:prompts, 1] > 0), (x[prompts:, 0] > 0)]).double() * 7
    y = torch.tensor([bins.index(v) for v in remaining.tolist()])
    return x, y, remaining


def test_prompt_share_teaches_the_first_prediction_its_own_input():
    """One prompt row per 100 token rows, as in a collection: trained row for row the probe
    barely learns the prompt rows; given half the loss it does, and the validation MAE that
    early stopping watches weighs them the same way."""
    from trail_scheduler.training.train import Recipe, fit, mae

    bins = LengthBins.uniform(4, 8)
    x, y, remaining = _prompt_and_token_rows(20, 2000, bins)
    errors = {}
    for share in (None, 0.5):
        recipe = Recipe(epochs=2, batch_size=32, hidden_units=16, prompt_share=share)
        probe, history, best = fit(x, y, x, remaining, bins, recipe, prompt_rows=20, val_prompt_rows=20)
        assert history[best - 1]["val_mae"] == pytest.approx(mae(probe, x, remaining, bins, 20, share), abs=0.01)
        errors[share] = mae(probe, x[:20], remaining[:20], bins)
    assert errors[0.5] < 2 and errors[None] > 3  # knowing nothing (the middle) is off by about 3.5
    # The weighted MAE: half each kind's own mean.
    probe, _, _ = fit(x, y, x, remaining, bins, Recipe(epochs=1, hidden_units=16))
    prompts, tokens = mae(probe, x[:20], remaining[:20], bins), mae(probe, x[20:], remaining[20:], bins)
    assert mae(probe, x, remaining, bins, 20, 0.5) == pytest.approx((prompts + tokens) / 2)


def test_rank_correlation_is_spearmans_with_tied_lengths_sharing_a_rank():
    from trail_scheduler.training.evaluate import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    # Three answers at the cap share the rank 3: ranks (0, 1, 3, 3, 3) against (0, 1, 2, 3, 4).
    assert rank_correlation([1, 2, 3, 4, 5], [7, 9, 512, 512, 512]) == pytest.approx(8 / 80**0.5)
    assert rank_correlation([1, 1, 1], [1, 2, 3]) == 0.0


def test_eval_replays_the_prior_the_engine_would_use():
    """The same readings, three starts: the prompt prior's first prediction is the prompt
    predictor's; the probe prior's is p⁰; after the tokens' readings the three converge."""
    import numpy as np

    from trail_contract.settings import RefinementPrior, SchedulerSettings
    from trail_scheduler.training.data import RequestStates
    from trail_scheduler.training.evaluate import replay

    bins = LengthBins.uniform(10, 512)
    length = 40
    states = RequestStates(
        ids=["a"],
        lengths=np.array([length]),
        prompt=torch.zeros(1, 4),
        tokens=torch.zeros(length, 4),
        offsets=np.array([0, length]),
    )
    p0 = np.full((1, 10), 0.01)
    p0[0, 9] = 0.91  # the prompt reading says "very long"
    readings = np.full((length, 10), 0.01)
    readings[:, 0] = 0.91  # every token says "under 51 tokens left"
    short = np.zeros((1, 10))
    short[0, 0] = 1.0  # the prompt predictor says "short"
    firsts = {}
    for prior in RefinementPrior:
        errors, _, _, (predicted, true) = replay(
            states, p0, readings, [25.6], bins, SchedulerSettings(refinement_prior=prior), (bins, short)
        )
        firsts[prior] = errors["first"][0]
        assert true == [length] and len(predicted) == 1
        assert errors["refined"][0] < 60
    assert firsts[RefinementPrior.PROMPT] == pytest.approx(abs(25.6 + 1 - length), abs=0.5)
    assert firsts[RefinementPrior.PROBE] > 400  # p⁰: about 460 tokens
    assert firsts[RefinementPrior.BOTH] < firsts[RefinementPrior.PROBE]
    # Ranked on the prompt estimate for the whole answer, the refined error is its countdown's.
    errors, *_ = replay(states, p0, readings, [25.6], bins, SchedulerSettings(probe_ranks_after=1000))
    steps = np.arange(length)
    assert errors["refined"][0] == pytest.approx(np.mean(np.abs(np.maximum(0, 25.6 - steps) - (length - steps))))
    assert errors["first"][0] > 400  # the probe's first reading is still taken


def test_simulated_bursts_credit_exact_prompt_estimates_with_the_oracles_gain():
    """Without preemption TRAIL serves a burst in the order of its prompt estimates: exact
    ones make it the oracle's order, whatever the probe reads."""
    import numpy as np

    from trail_contract.settings import SchedulerSettings
    from trail_scheduler.core.simulation import RecordedRequest
    from trail_scheduler.training.evaluate import simulated_bursts

    bins = LengthBins.uniform(8, 512)
    flat = np.full(bins.count, 1 / bins.count)
    lengths = [500, 20, 300, 7, 90, 260, 41, 120, 3, 410]
    recorded = [
        RecordedRequest(str(i), 0.0, n, 10, flat, np.tile(flat, (n - 1, 1)), prompt_estimate=float(n))
        for i, n in enumerate(lengths)
    ]
    report = simulated_bursts(recorded, SchedulerSettings(), bins, bursts=2, size=6, slots=2)
    assert report["size"] == 6 and len(report["trail"]["per_burst"]) == 2
    assert report["fcfs"]["mean_latency_ratio"] == 1.0
    assert report["trail+"]["mean_latency_ratio"] < 1.0
    assert report["trail, c=0"]["per_burst"] == report["trail+"]["per_burst"]
    assert report["trail, c=0"]["share_of_oracle_gain"] == 1.0
    assert report["trail, c=0"]["preemptions_per_burst"] == 0


def test_simulated_bursts_can_be_drawn_to_chat_traffics_length_mix():
    """As `trail bench --length-mix chat` draws its requests: the held-out answers are
    resampled by length, and a split too small for a bin's quota is a clear error."""
    import numpy as np

    from trail_contract.settings import SchedulerSettings
    from trail_scheduler.core.simulation import RecordedRequest
    from trail_scheduler.length_mix import CHAT_MIX
    from trail_scheduler.training.evaluate import simulated_bursts

    bins = LengthBins.uniform(8, 512)
    flat = np.full(bins.count, 1 / bins.count)
    recorded = [
        RecordedRequest(str(i), 0.0, n, 10, flat, np.tile(flat, (n - 1, 1)), prompt_estimate=256.0)
        for i, n in enumerate([*range(2, 512, 3), *[512] * 20])
    ]
    report = simulated_bursts(recorded, SchedulerSettings(), bins, bursts=2, size=32, slots=4, mix=CHAT_MIX, cap=512)
    assert report["length_mix"] == "chat" and report["size"] == 32
    assert report["fcfs"]["mean_latency_ratio"] == 1.0 and report["trail+"]["mean_latency_ratio"] < 0.9
    with pytest.raises(CollectionError, match=r"needs 21 answers of 512-512 tokens and the pool has 20"):
        simulated_bursts(recorded, SchedulerSettings(), bins, bursts=1, size=100, slots=4, mix=CHAT_MIX, cap=512)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--bursts", "0", "must be at least 1, got 0"),
        ("--burst-size", "many", "not a whole number: 'many'"),
        ("--slots", "-2", "must be at least 1, got -2"),
        ("--evidence-weight", "0", "evidence_weight must be a number above 0"),
        ("--evidence-weight", "heavy", "not a number: 'heavy'"),
        ("--predict-every", "0", "predict_every must be an integer from 1"),
        ("--probe-ranks-after", "-1", "probe_ranks_after must be an integer from 0"),
        ("--probe-ranks-after", "1.5", "not a whole number: '1.5'"),
        ("--length-mix", "uniform", "invalid choice: 'uniform'"),
    ],
)
def test_eval_refuses_bad_numbers_before_reading_anything(tmp_path, capsys, flag, value, message):
    from trail_scheduler.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["probe", "eval", str(tmp_path), "--probe", "p", "--prompt-predictor", "q", flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, message",
    [("1", "must be between 0 and 1 (exclusive), got 1"), ("0", "got 0"), ("half", "not a number: 'half'")],
)
def test_train_refuses_a_prompt_share_outside_0_to_1(tmp_path, capsys, value, message):
    from trail_scheduler.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["probe", "train", str(tmp_path), "--output", str(tmp_path / "p.safetensors"), "--prompt-share", value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
