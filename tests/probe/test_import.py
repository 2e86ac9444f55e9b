"""`trail probe import`: the TRAIL authors' released probe format (a PyTorch state dict and
a config.json, as in harvard-cns/TRAIL-llm-scheduling predictors/mlp_layer11), built here
with torch, converted, and checked against a forward pass of the original weights."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from trail_scheduler.cli import main
from trail_scheduler.core import LengthBins
from trail_scheduler.probe import ProbeFileError, importer, load_probe
from trail_scheduler.probe.importer import import_probe

LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"


def authors_config(hidden_size=4096, hidden_dim=512, num_labels=10, max_len=512, layer=11) -> dict:
    """The keys of the released config.json (values of the released Llama-3-8B probe by default)."""
    return {
        "hidden_size": hidden_size,
        "hidden_dim": hidden_dim,
        "num_labels": num_labels,
        "max_len": max_len,
        "probe_layer_idx": layer,
        "dtype": "float32",
        "device": "cuda",
        "label_source": "actual_eos_remaining",
        "phase_filter": "decode",
        "split_unit": "request_hash",
        "training_data": {"requests": 51762, "samples": 804419, "hidden_size": hidden_size, "dtype": "float16"},
        "seed": 0,
    }


def authors_mlp(config: dict) -> torch.nn.Sequential:
    """Their MLP: Linear(hidden_size, hidden_dim) → ReLU → Linear(hidden_dim, num_labels)."""
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(config["hidden_size"], config["hidden_dim"]),
        torch.nn.ReLU(),
        torch.nn.Linear(config["hidden_dim"], config["num_labels"]),
    )
    with torch.no_grad():  # biases as large as the weights, so a dropped or swapped bias shows
        for p in mlp.parameters():
            p.uniform_(-1.0, 1.0)
    return mlp


def keyed(mlp: torch.nn.Sequential, prefixes: tuple[str, str]) -> dict[str, torch.Tensor]:
    first, second = prefixes
    return {
        f"{first}weight": mlp[0].weight.detach().clone(),
        f"{first}bias": mlp[0].bias.detach().clone(),
        f"{second}weight": mlp[2].weight.detach().clone(),
        f"{second}bias": mlp[2].bias.detach().clone(),
    }


def write_release(folder: Path, config: dict, state) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "model.pt")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder / "model.pt", folder / "config.json"


def assert_refused(folder: Path, config: dict, state, message: str) -> None:
    """Importing this release fails with a ProbeFileError matching ``message``."""
    source, config_path = write_release(folder / "src", config, state)
    with pytest.raises(ProbeFileError, match=message):
        import_probe(source, config_path, folder / "probe.safetensors", model=LLAMA)


def authors_expected_length(mlp: torch.nn.Sequential, config: dict, x: torch.Tensor) -> torch.Tensor:
    """Their runtime: softmax of the logits, times the midpoints of linspace(0, max_len, K + 1)."""
    edges = torch.linspace(0, config["max_len"], config["num_labels"] + 1)
    midpoints = (edges[:-1] + edges[1:]) / 2
    with torch.no_grad():
        return (torch.softmax(mlp(x), dim=-1) * midpoints).sum(-1)


@pytest.mark.parametrize("prefixes", [("fc1.", "fc2."), ("0.", "2."), ("layers.0.", "layers.2.")])
def test_predictions_equal_the_original_mlp(tmp_path, prefixes) -> None:
    # hidden_size == hidden_dim: a transposed fc1 would load without a shape error, so only
    # the comparison with the original forward pass can catch it.
    config = authors_config(hidden_size=32, hidden_dim=32, num_labels=10)
    mlp = authors_mlp(config)
    source, config_path = write_release(tmp_path / "src", config, keyed(mlp, prefixes))
    probe = import_probe(source, config_path, tmp_path / "probe.safetensors", model=LLAMA)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        expected = torch.softmax(mlp(x), dim=-1)
    assert torch.allclose(probe.module.probabilities(x), expected, atol=1e-6)
    representatives = torch.tensor(probe.bins.representatives)
    ours = (probe.module.probabilities(x) * representatives).sum(-1)
    assert torch.allclose(ours, authors_expected_length(mlp, config, x), atol=1e-3)


def test_the_released_structure_imports_with_provenance_and_the_layer_mapped(tmp_path, monkeypatch) -> None:
    config = authors_config()  # full size: Linear(4096, 512) → ReLU → Linear(512, 10)
    mlp = authors_mlp(config)
    source, config_path = write_release(tmp_path / "mlp_layer11", config, keyed(mlp, ("fc1.", "fc2.")))
    source_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    # Stand in for the released file: its sha256 is what makes it a known release.
    release = next(iter(importer.KNOWN_RELEASES.values()))
    monkeypatch.setattr(importer, "KNOWN_RELEASES", {source_sha: release})

    out = tmp_path / "llama3-8b.probe.safetensors"
    imported = import_probe(source, config_path, out)
    probe = load_probe(out)
    assert probe.sha256 == imported.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (probe.model, probe.hidden_size, probe.hidden_units) == (LLAMA, 4096, 512)
    assert probe.layer == 12  # their layer 11's output = the residual stream after 12 layers
    assert probe.bins == LengthBins.uniform(10, 512.0)
    source_info = probe.training["source"]
    assert source_info["sha256"] == source_sha
    assert (source_info["repository"], source_info["license"]) == ("harvard-cns/TRAIL-llm-scheduling", "Apache-2.0")
    assert "origin" not in source_info
    assert probe.training["source_config"] == config
    assert probe.training["source_config_sha256"] == hashlib.sha256(config_path.read_bytes()).hexdigest()
    x = torch.randn(8, 4096, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(probe.module.probabilities(x), torch.softmax(mlp(x), dim=-1), atol=1e-5)

    again = import_probe(source, config_path, tmp_path / "again.safetensors")
    assert again.sha256 == probe.sha256  # same release in, same file out


def test_a_pickle_with_code_is_refused_and_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    source, config_path = write_release(tmp_path / "src", authors_config(), {"fc1.weight": Payload()})
    out = tmp_path / "probe.safetensors"
    with pytest.raises(ProbeFileError, match="weights_only=True.*Unsupported global"):
        import_probe(source, config_path, out, model=LLAMA)
    assert not marker.exists()
    assert not out.exists()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.update({"fc1.weight": s["fc1.weight"][:, :8]}), r"fc1.weight has shape \[16, 8\].*\[16, 12\]"),
        (lambda s: s.update({"fc2.bias": torch.zeros(7)}), r"fc2.bias has shape \[7\].*\[5\]"),
        (lambda s: s.update({"fc1.weight": s["fc1.weight"].T.contiguous()}), r"fc1.weight has shape \[12, 16\]"),
        (lambda s: s.update({"fc1.weight": s["fc1.weight"].to(torch.int64)}), "expected floating point"),
        (lambda s: s.update({"fc3.weight": torch.zeros(1)}), r"keys \[.*'fc3.weight'.*expected exactly"),
        (lambda s: s.pop("fc2.bias"), "expected exactly fc1.weight/bias"),
    ],
    ids=["hidden-size", "bins", "transposed", "integer", "extra-key", "missing-key"],
)
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, mutate, message) -> None:
    config = authors_config(hidden_size=12, hidden_dim=16, num_labels=5)
    state = keyed(authors_mlp(config), ("fc1.", "fc2."))
    mutate(state)
    assert_refused(tmp_path, config, state, message)


def test_a_checkpoint_that_is_not_a_flat_state_dict_is_refused(tmp_path) -> None:
    config = authors_config(hidden_size=12, hidden_dim=16, num_labels=5)
    nested = {"model_state_dict": keyed(authors_mlp(config), ("fc1.", "fc2.")), "epoch": 4}
    assert_refused(tmp_path, config, nested, "flat state dict of tensors.*'model_state_dict': 'dict'")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("hidden_dim"), "no 'hidden_dim' or 'intermediate_size'"),
        (lambda c: c.update(num_labels=1), "num_labels must be an integer >= 2"),
        (lambda c: c.update(max_len=0), "max_len must be a number > 0"),
        (lambda c: c.update(probe_layer_idx="11"), "probe_layer_idx must be an integer"),
    ],
)
def test_a_bad_config_is_refused(tmp_path, edit, message) -> None:
    config = authors_config(hidden_size=12, hidden_dim=16, num_labels=5)
    state = keyed(authors_mlp(config), ("fc1.", "fc2."))
    edit(config)
    assert_refused(tmp_path, config, state, message)


def test_an_unknown_file_needs_model_and_records_its_stated_origin(tmp_path) -> None:
    config = authors_config(hidden_size=12, hidden_dim=16, num_labels=5)
    source, config_path = write_release(tmp_path / "src", config, keyed(authors_mlp(config), ("fc1.", "fc2.")))
    with pytest.raises(ProbeFileError, match="not a known release.*--model"):
        import_probe(source, config_path, tmp_path / "probe.safetensors")
    out = tmp_path / "probe.safetensors"
    probe = import_probe(source, config_path, out, model=LLAMA, origin="s3://b/p.pt", layer=9)
    assert probe.training["source"]["origin"] == "s3://b/p.pt"
    assert "repository" not in probe.training["source"]
    assert (probe.layer, probe.training["layer_override"]) == (9, 9)


def test_cli_writes_the_probe_and_prints_its_sha256(tmp_path, capsys) -> None:
    config = authors_config(hidden_size=12, hidden_dim=16, num_labels=5)
    source, config_path = write_release(tmp_path / "src", config, keyed(authors_mlp(config), ("0.", "2.")))
    out = tmp_path / "probe.safetensors"
    args = ["probe", "import", str(source), "--config", str(config_path), "--out", str(out)]
    assert main([*args, "--model", LLAMA]) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}" in printed
    assert f"{LLAMA}, layer 12, 12->16->5 bins over 0-512" in printed

    assert main(args) == 2  # no --model for an unknown file: an exit message, not a traceback
    assert "error: " in capsys.readouterr().err


def test_an_unwritable_output_is_an_error_message(tmp_path, capsys) -> None:
    config = authors_config(hidden_size=8, hidden_dim=4)
    source, config = write_release(tmp_path, config, keyed(authors_mlp(config), ("fc1.", "fc2.")))
    out = tmp_path / "missing-folder" / "p.safetensors"
    code = main(["probe", "import", str(source), "--config", str(config), "--out", str(out), "--model", "m"])
    assert code == 2
    assert "cannot write" in capsys.readouterr().err
