"""The probe module and its file: round trip, validation of every malformed case, fit, CLI."""

import hashlib
import json
import math
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from trail_scheduler.core import LengthBins
from trail_scheduler.probe import (
    LengthProbe,
    ProbeFileError,
    check_fits,
    load_probe,
    save_probe,
    weights_sha256,
)

HIDDEN, UNITS = 16, 8  # tiny, so every case is fast
BINS = LengthBins.log_spaced(count=6, max_length=2048.0)
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TRAINING = {"recipe": "AdamW lr 0.01 cosine", "epochs": 30, "data": "alpaca", "metrics": {"mae": 41.5}}


def make_probe(hidden: int = HIDDEN, units: int = UNITS, bins: LengthBins = BINS) -> LengthProbe:
    torch.manual_seed(0)
    return LengthProbe(hidden, bins.count, hidden_units=units)


@pytest.fixture
def probe_path(tmp_path) -> Path:
    path = tmp_path / "probe.safetensors"
    save_probe(make_probe(), BINS, path, model=MODEL, layer=5, training=TRAINING)
    return path


def test_probe_maps_hidden_states_to_bin_probabilities():
    """Logits have one entry per bin for any leading shape; probabilities are a softmax."""
    probe = make_probe()
    x = torch.randn(3, 7, HIDDEN)
    assert probe(x).shape == (3, 7, BINS.count)
    probs = probe.probabilities(x.to(torch.bfloat16).float())
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(3, 7))
    assert probe.hidden_units == UNITS and probe.hidden_size == HIDDEN
    assert LengthProbe(HIDDEN, 10).hidden_units == 512  # the reference architecture


def test_round_trip_preserves_outputs_and_metadata(tmp_path):
    """save → load gives the same function, bins and metadata; the identity is the file's sha256."""
    probe = make_probe()
    path = tmp_path / "p.safetensors"
    file_sha = save_probe(probe, BINS, path, model="m", layer=3, training=TRAINING)
    loaded = load_probe(path)

    x = torch.randn(4, HIDDEN)
    assert torch.equal(loaded.module(x), probe(x))
    assert not loaded.module.training
    assert loaded.sha256 == file_sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (loaded.bins, loaded.layer, loaded.hidden_size, loaded.model) == (BINS, 3, HIDDEN, "m")
    assert loaded.training == TRAINING
    from_bytes = load_probe(path.read_bytes())
    assert from_bytes.describe() == loaded.describe() and torch.equal(from_bytes.module(x), probe(x))
    assert list(tmp_path.iterdir()) == [path]  # the atomic write leaves no temporary file


def test_describe_is_json_safe_and_complete(probe_path):
    """`trail probe inspect` prints this: everything needed to identify and check a probe."""
    info = json.loads(json.dumps(load_probe(probe_path).describe(), allow_nan=False))
    assert info["sha256"] == hashlib.sha256(probe_path.read_bytes()).hexdigest()
    assert info["bin_edges"][-1] == "inf"
    assert all(math.isfinite(r) for r in info["bin_representatives"])
    assert {k: info[k] for k in ("model", "hidden_size", "layer", "hidden_units", "num_bins", "format_version")} == {
        "model": MODEL,
        "hidden_size": HIDDEN,
        "layer": 5,
        "hidden_units": UNITS,
        "num_bins": BINS.count,
        "format_version": 1,
    }
    assert info["training"] == TRAINING
    assert len(info["weights_sha256"]) == 64


def test_the_prompt_reading_is_kept_and_a_file_without_it_reads_the_mean(tmp_path, probe_path):
    """The authors' probes and this project's first ones were trained on the prompt mean and
    name no reading: they must keep being read that way."""
    path = tmp_path / "last.safetensors"
    save_probe(make_probe(), BINS, path, model="m", layer=3, training={}, prompt_reading="last")
    assert load_probe(path).prompt_reading == "last" == load_probe(path).describe()["prompt_reading"]
    assert load_probe(probe_path).prompt_reading == "mean"
    assert load_probe(rewrite(path, meta={"prompt_reading": DROP})).prompt_reading == "mean"


# -- malformed files ----------------------------------------------------------------


Builder = Callable[[Path], "bytes | Path"]
DROP = object()


def rewrite(path: Path, *, meta: dict | None = None, tensors=None, rehash: bool = False) -> bytes:
    """The valid file at `path` with metadata fields replaced (or DROPped) and tensors edited."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    trail = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["trail"])
    weights = load_tensors(data)
    if tensors:
        tensors(weights)
    for name, value in (meta or {}).items():
        if value is DROP:
            del trail[name]
        else:
            trail[name] = value
    if rehash:
        trail["weights_sha256"] = weights_sha256(weights)
    return save_tensors(weights, metadata={"trail": json.dumps(trail)})


def with_meta(name: str, value=DROP) -> Builder:
    return lambda p: rewrite(p, meta={name: value})


def with_tensors(edit: Callable[[dict], None], rehash: bool = False) -> Builder:
    return lambda p: rewrite(p, tensors=edit, rehash=rehash)


def with_raw_metadata(text: str) -> Builder:
    return lambda p: save_tensors(load_tensors(p.read_bytes()), metadata={"trail": text})


def poke(name: str, value: float) -> Callable[[dict], None]:
    """Set one weight (the stored hash is only updated if the case rehashes)."""
    return lambda t: t[name].view(-1).__setitem__(0, value)


def flip_last_mantissa_byte(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x01  # lowest byte of the last little-endian float32: stays finite
    return bytes(data)


# Each case: how to build the file's bytes (or path) from a valid probe file, and the message it must give.
MALFORMED: dict[str, tuple[Builder, str]] = {
    "missing file": (lambda p: p.with_name("absent.safetensors"), "probe file not found"),
    "a directory": (lambda p: p.parent, "cannot read probe file"),
    "too short": (lambda p: b"PK\x03", "too short"),
    "text file": (lambda p: b"this is a text file, not a probe", "header length"),
    "header not JSON": (lambda p: struct.pack("<Q", 5) + b"{nope", "header is not JSON"),
    "header not an object": (lambda p: struct.pack("<Q", 2) + b"[]", "header is not a JSON object"),
    "truncated data": (lambda p: p.read_bytes()[:-10], "corrupt safetensors data"),
    "no trail metadata": (lambda p: save_tensors(load_tensors(p.read_bytes())), "no TRAIL metadata"),
    "metadata not JSON": (with_raw_metadata("{oops"), "TRAIL metadata is not valid JSON"),
    "metadata not an object": (with_raw_metadata("[1, 2]"), "TRAIL metadata must be a JSON object"),
    "no format_version": (with_meta("format_version"), "missing required field 'format_version'"),
    "future format_version": (with_meta("format_version", 2), "unsupported probe format_version 2"),
    "missing field": (with_meta("layer"), "missing required field(s): layer"),
    "mistyped field": (with_meta("hidden_size", "16"), "'hidden_size' must be an integer >= 1"),
    "negative layer": (with_meta("layer", -1), "'layer' must be an integer >= 0"),
    "malformed weights_sha256": (with_meta("weights_sha256", "abc"), "64 hex digits"),
    "unknown prompt reading": (with_meta("prompt_reading", "first"), "'prompt_reading' must be 'mean' or 'last'"),
    "decreasing bin edges": (with_meta("bin_edges", [0, 50, 20]), "invalid bin_edges [0, 50, 20]"),
    "bin edges not a list": (with_meta("bin_edges", "0,50,inf"), "invalid bin_edges '0,50,inf'"),
    "bin edge not a number": (with_meta("bin_edges", [0, "x", 9]), "invalid bin_edges [0, 'x', 9]"),
    "missing tensor": (with_tensors(lambda t: t.pop("fc2.bias")), "missing tensor(s): fc2.bias"),
    "unexpected tensor": (
        with_tensors(lambda t: t.__setitem__("extra", torch.zeros(1))),
        "unexpected tensor(s) in probe file: extra",
    ),
    "half precision": (
        with_tensors(lambda t: t.__setitem__("fc1.bias", t["fc1.bias"].half())),
        "'fc1.bias' has dtype torch.float16, expected torch.float32",
    ),
    "hidden_size mismatch": (
        with_meta("hidden_size", 4096),
        f"'fc1.weight' has shape [{UNITS}, {HIDDEN}], expected [{UNITS}, 4096]",
    ),
    "hidden_units mismatch": (
        with_meta("hidden_units", 512),
        f"'fc1.weight' has shape [{UNITS}, {HIDDEN}], expected [512, {HIDDEN}]",
    ),
    "bin count mismatch": (
        with_meta("bin_edges", LengthBins.uniform().to_list()),
        f"'fc2.weight' has shape [{BINS.count}, {UNITS}], expected [10, {UNITS}]",
    ),
    "NaN weight": (with_tensors(poke("fc2.weight", math.nan), rehash=True), "'fc2.weight' has non-finite"),
    "inf bias": (with_tensors(poke("fc1.bias", math.inf), rehash=True), "'fc1.bias' has non-finite"),
    "tampered weight": (with_tensors(poke("fc1.weight", 0.5)), "weights_sha256 mismatch"),
    "flipped byte": (flip_last_mantissa_byte, "the file was modified or corrupted"),
}


def malformed_error(probe_path: Path, case: str) -> str:
    source = MALFORMED[case][0](probe_path)
    with pytest.raises(ProbeFileError) as caught:
        load_probe(source)
    return str(caught.value)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_gives_its_own_clear_error(probe_path, case):
    """Each way a probe file can be broken is refused with a message that says which."""
    assert MALFORMED[case][1] in malformed_error(probe_path, case)


def test_malformed_messages_are_all_different(probe_path):
    """No two failure cases share a message, so an operator can tell them apart."""
    messages = [malformed_error(probe_path, case) for case in MALFORMED]
    assert len(set(messages)) == len(messages)


def test_probe_file_error_is_a_value_error():
    """Callers that handle bad configuration as ValueError also catch bad probe files."""
    assert issubclass(ProbeFileError, ValueError)


# -- saving -------------------------------------------------------------------------


def nan_probe() -> LengthProbe:
    probe = make_probe()
    with torch.no_grad():
        probe.fc1.weight[0, 0] = math.nan
    return probe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bins": LengthBins.uniform()}, f"predicts {BINS.count} bins but 10 bins were given"),
        ({"training": {"metrics": {"mae": math.nan}}}, "training info must be JSON-serialisable"),
        ({"training": {"when": object()}}, "training info must be JSON-serialisable"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"layer": -2}, "'layer' must be an integer >= 0"),
        ({"prompt_reading": "max"}, "'prompt_reading' must be 'mean' or 'last', got 'max'"),
        ({"probe": nan_probe()}, "'fc1.weight' has non-finite"),
    ],
)
def test_save_refuses_what_load_would_refuse(tmp_path, kwargs, message):
    """A file save_probe writes always loads: bad input fails up front and writes nothing."""
    args = {"probe": make_probe(), "bins": BINS, "model": "m", "layer": 0, "training": {}} | kwargs
    with pytest.raises(ProbeFileError) as caught:
        save_probe(args.pop("probe"), args.pop("bins"), tmp_path / "p.safetensors", **args)
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# -- fitting a model ------------------------------------------------------------------


def test_check_fits_accepts_a_matching_model(probe_path):
    """Same hidden size and the layer exists: no error."""
    check_fits(load_probe(probe_path), hidden_size=HIDDEN, num_layers=6)


@pytest.mark.parametrize(
    ("hidden_size", "num_layers", "message"),
    [
        (576, 30, f"probe was trained for hidden size {HIDDEN} (model '{MODEL}'), this model has 576"),
        (HIDDEN, 5, "probe reads layer 5, this model has 5 layers (0 to 4)"),
    ],
)
def test_check_fits_rejects_a_different_model(probe_path, hidden_size, num_layers, message):
    """A probe for another hidden size, or a layer the model lacks, is refused before serving."""
    with pytest.raises(ProbeFileError) as caught:
        check_fits(load_probe(probe_path), hidden_size=hidden_size, num_layers=num_layers)
    assert str(caught.value) == message


# -- the CLI --------------------------------------------------------------------------


def trail(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `trail` console script of this environment."""
    command = Path(sys.executable).with_name("trail")
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=60)


def test_cli_inspect_prints_the_metadata(probe_path):
    """`trail probe inspect FILE` validates the file and prints describe() as JSON."""
    result = trail("probe", "inspect", str(probe_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == load_probe(probe_path).describe()


def test_cli_inspect_reports_a_bad_file(probe_path):
    """A broken file: exit status 2 and the loader's message on stderr, nothing on stdout."""
    probe_path.write_bytes(flip_last_mantissa_byte(probe_path))
    result = trail("probe", "inspect", str(probe_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: weights_sha256 mismatch")
    assert result.stdout == ""
