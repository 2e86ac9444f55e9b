"""The probe file: one ``.safetensors`` file, weights plus JSON metadata.

Layout (format_version 1):

- tensors ``fc1.weight`` ``[hidden_units, hidden_size]``, ``fc1.bias`` ``[hidden_units]``,
  ``fc2.weight`` ``[K, hidden_units]``, ``fc2.bias`` ``[K]``, all float32;
- the safetensors header's ``__metadata__["trail"]`` holds a JSON object with
  ``format_version``, ``model`` (what it was trained for), ``hidden_size``, ``layer``
  (the residual stream it reads, after ``layer`` decoder layers, as vLLM's auxiliary
  hidden states and Hugging Face's ``hidden_states[layer]`` count), ``hidden_units``,
  ``bin_edges`` (:meth:`LengthBins.to_list`, ``"inf"`` for an open top bin), ``training``
  (free-form: recipe, epochs, data, metrics) and ``weights_sha256``: sha256 over the
  tensors' raw little-endian float32 bytes, concatenated in the order above; optionally
  ``prompt_reading``: which state of the prompt gives the first prediction p⁰, ``"mean"``
  (the prompt's states averaged, the authors' and the default when absent) or ``"last"``
  (the state at the last prompt position, the one that predicts the first output token).

A probe's identity is the sha256 of the whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trail_contract.errors import TrailError
from trail_contract.probe_format import (
    MAX_BINS,
    MAX_HIDDEN_SIZE,
    MAX_HIDDEN_UNITS,
    MAX_LAYER,
    METADATA_KEY,
    MIN_BINS,
    PROMPT_READINGS,
    ProbeFormatError,
    read_header,
)
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe.model import LengthProbe

FORMAT_VERSION = 1
TENSOR_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
REQUIRED_FIELDS = (
    "format_version",
    "model",
    "hidden_size",
    "layer",
    "hidden_units",
    "bin_edges",
    "training",
    "weights_sha256",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# safetensors dtypes read into tensors, so a wrong one is refused with the tensor's name and torch's spelling
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class ProbeFileError(TrailError):
    """A probe file that cannot be used, with a message saying exactly why."""


@dataclass(frozen=True)
class LoadedProbe:
    """A validated probe file: the module (eval mode) and what it was trained for."""

    module: LengthProbe
    bins: LengthBins
    model: str
    hidden_size: int
    hidden_units: int
    layer: int
    training: dict[str, Any]
    weights_sha256: str
    sha256: str  # of the whole file: the probe's identity
    format_version: int = FORMAT_VERSION
    prompt_reading: str = PROMPT_READINGS[0]

    def describe(self) -> dict[str, Any]:
        """JSON-safe metadata (what ``trail probe inspect`` prints)."""
        return {
            "sha256": self.sha256,
            "format_version": self.format_version,
            "model": self.model,
            "hidden_size": self.hidden_size,
            "layer": self.layer,
            "prompt_reading": self.prompt_reading,
            "hidden_units": self.hidden_units,
            "num_bins": self.bins.count,
            "bin_edges": self.bins.to_list(),
            "bin_representatives": list(self.bins.representatives),
            "training": self.training,
            "weights_sha256": self.weights_sha256,
        }


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' little-endian float32 bytes in :data:`TENSOR_NAMES` order."""
    digest = hashlib.sha256()
    for name in TENSOR_NAMES:
        array = tensors[name].detach().cpu().to(torch.float32).contiguous().numpy()
        digest.update(array.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def save_probe(
    probe: LengthProbe,
    bins: LengthBins,
    path: str | os.PathLike[str],
    *,
    model: str,
    layer: int,
    training: dict,
    prompt_reading: str = PROMPT_READINGS[0],
) -> str:
    """Write ``probe`` to ``path`` (atomically) and return the file's sha256.

    The same checks as :func:`load_probe` run before anything is written, so a
    file this writes always loads.
    """
    if probe.num_bins != bins.count:
        raise ProbeFileError(f"the probe predicts {probe.num_bins} bins but {bins.count} bins were given")
    tensors = {name: t.detach().cpu().to(torch.float32).contiguous() for name, t in probe.state_dict().items()}
    try:
        training_json = json.loads(json.dumps(training, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ProbeFileError(f"training info must be JSON-serialisable without NaN/inf: {error}") from None
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "hidden_size": probe.hidden_size,
        "layer": layer,
        "hidden_units": probe.hidden_units,
        "bin_edges": bins.to_list(),
        "training": training_json,
        "weights_sha256": weights_sha256(tensors),
        "prompt_reading": prompt_reading,
    }
    _validate(meta, tensors)
    data = _serialise(tensors, meta)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _serialise(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def load_probe(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> LoadedProbe:
    """Read and validate a probe file (a path, or the file's bytes).

    Raises :class:`ProbeFileError` naming the first problem found.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ProbeFileError(f"probe file not found: {source}") from None
        except OSError as error:
            raise ProbeFileError(f"cannot read probe file {source}: {error.strerror or error}") from None
    meta, tensors = _read(data)
    _validate(meta, tensors)
    bins = LengthBins.from_list(meta["bin_edges"])
    module = LengthProbe(meta["hidden_size"], bins.count, meta["hidden_units"])
    module.load_state_dict(tensors)
    module.eval()
    return LoadedProbe(
        module=module,
        bins=bins,
        model=meta["model"],
        hidden_size=meta["hidden_size"],
        hidden_units=meta["hidden_units"],
        layer=meta["layer"],
        training=meta["training"],
        weights_sha256=meta["weights_sha256"],
        sha256=hashlib.sha256(data).hexdigest(),
        format_version=meta["format_version"],
        prompt_reading=meta.get("prompt_reading", PROMPT_READINGS[0]),
    )


def check_fits(loaded: LoadedProbe, hidden_size: int, num_layers: int) -> None:
    """Raise :class:`ProbeFileError` unless the probe can read this model's hidden states."""
    if loaded.hidden_size != hidden_size:
        raise ProbeFileError(
            f"probe was trained for hidden size {loaded.hidden_size} (model {loaded.model!r}), "
            f"this model has {hidden_size}"
        )
    if not 0 <= loaded.layer < num_layers:
        raise ProbeFileError(
            f"probe reads layer {loaded.layer}, this model has {num_layers} layers (0 to {num_layers - 1})"
        )


# -- reading ---------------------------------------------------------------------


def _read(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and the tensors, through the one header parser (:mod:`trail_contract.probe_format`)."""
    try:
        header = read_header(data)
    except ProbeFormatError as error:
        raise ProbeFileError(str(error)) from None
    tensors = {}
    for name, info in header.tensors.items():
        dtype = _DTYPES.get(info.dtype)
        if dtype is None:
            raise ProbeFileError(f"tensor {name!r} has dtype {info.dtype}, expected F32")
        if info.end == info.begin:
            tensors[name] = torch.empty(info.shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(bytearray(data[info.begin : info.end]), dtype=dtype).reshape(info.shape)
    return header.trail, tensors


def _shown(value: Any) -> str:
    """A value for a message, cut short: metadata comes from whoever wrote the file."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


# -- validation (shared by save and load) -----------------------------------------


def _validate(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "format_version" not in meta:
        raise ProbeFileError("probe metadata is missing required field 'format_version'")
    if meta["format_version"] != FORMAT_VERSION or isinstance(meta["format_version"], bool):
        raise ProbeFileError(
            f"unsupported probe format_version {_shown(meta['format_version'])}; this version reads {FORMAT_VERSION}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in meta]
    if missing:
        raise ProbeFileError(f"probe metadata is missing required field(s): {', '.join(missing)}")
    _check_field(
        meta, "model", lambda v: isinstance(v, str) and 0 < len(v.strip()) <= 1024, "a non-empty string (1024 at most)"
    )
    for name, low, high in (
        ("hidden_size", 1, MAX_HIDDEN_SIZE),
        ("hidden_units", 1, MAX_HIDDEN_UNITS),
        ("layer", 0, MAX_LAYER),
    ):
        _check_field(
            meta, name, lambda v, lo=low, hi=high: _is_int(v) and lo <= v <= hi, f"an integer >= {low}, <= {high}"
        )
    _check_field(meta, "training", lambda v: isinstance(v, dict), "a JSON object")
    if "prompt_reading" in meta:
        _check_field(meta, "prompt_reading", lambda v: v in PROMPT_READINGS, " or ".join(map(repr, PROMPT_READINGS)))
    _check_field(meta, "weights_sha256", lambda v: isinstance(v, str) and bool(_SHA256.match(v)), "64 hex digits")
    edges = meta["bin_edges"]
    try:
        if not isinstance(edges, list):
            raise ValueError("expected a list")
        if not MIN_BINS + 1 <= len(edges) <= MAX_BINS + 1:
            raise ValueError(f"{len(edges) - 1} bins; a probe has {MIN_BINS} to {MAX_BINS}")
        bins = LengthBins.from_list(edges)
    except (TypeError, ValueError) as error:
        raise ProbeFileError(f"invalid bin_edges {_shown(edges)}: {error}") from None

    names = set(tensors)
    if missing_tensors := [n for n in TENSOR_NAMES if n not in names]:
        raise ProbeFileError(f"probe file is missing tensor(s): {', '.join(missing_tensors)}")
    if extra := sorted(names - set(TENSOR_NAMES)):
        raise ProbeFileError(f"unexpected tensor(s) in probe file: {', '.join(extra)}")
    h, u, k = meta["hidden_size"], meta["hidden_units"], bins.count
    expected = {"fc1.weight": [u, h], "fc1.bias": [u], "fc2.weight": [k, u], "fc2.bias": [k]}
    for name in TENSOR_NAMES:
        tensor = tensors[name]
        if tensor.dtype != torch.float32:
            raise ProbeFileError(f"tensor {name!r} has dtype {tensor.dtype}, expected torch.float32")
        if list(tensor.shape) != expected[name]:
            raise ProbeFileError(
                f"tensor {name!r} has shape {list(tensor.shape)}, expected {expected[name]} "
                f"(hidden_size={h}, hidden_units={u}, {k} bins from the metadata)"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ProbeFileError(f"tensor {name!r} has non-finite values (NaN or inf)")
    actual = weights_sha256(tensors)
    if actual != meta["weights_sha256"]:
        raise ProbeFileError(
            f"weights_sha256 mismatch: metadata says {meta['weights_sha256']}, the tensors hash to {actual} "
            "(the file was modified or corrupted)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(meta: dict[str, Any], name: str, ok, what: str) -> None:
    if not ok(meta[name]):
        raise ProbeFileError(f"probe metadata field {name!r} must be {what}, got {_shown(meta[name])}")


__all__ = [
    "FORMAT_VERSION",
    "LoadedProbe",
    "PROMPT_READINGS",
    "ProbeFileError",
    "TENSOR_NAMES",
    "check_fits",
    "load_probe",
    "save_probe",
    "weights_sha256",
]
