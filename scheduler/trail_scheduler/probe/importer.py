"""Import a probe released in the TRAIL authors' format into this project's probe file.

The authors' repository (harvard-cns/TRAIL-llm-scheduling, Apache-2.0) ships
``predictors/mlp_layer11/``: ``model.pt``, a PyTorch state dict, and ``config.json``
(``hidden_size`` 4096, ``hidden_dim`` 512, ``num_labels`` 10, ``max_len`` 512,
``probe_layer_idx`` 11, ...). Their runtime (``sglang.patch``, ``trail_predictor.py``)
builds ``fc1 = Linear(hidden_size, hidden_dim)``, ReLU, ``fc2 = Linear(hidden_dim,
num_labels)``, reads the output as logits over ``num_labels`` equal bins over
``[0, max_len]`` with the bin midpoints as lengths, and accepts state-dict keys
``fc1.*``/``fc2.*``, ``0.*``/``2.*`` (an ``nn.Sequential``) or ``layers.0.*``/``layers.2.*``.
That is :class:`LengthProbe` and ``LengthBins.uniform(num_labels, max_len)`` exactly
(no normalisation or other piece to set to identity), so weights are copied unchanged.

Layer convention: their ``probe_layer_idx`` i is the output of 0-based decoder layer i.
Their SGLang patch captures it with ``layers_to_capture = [i + 1]``, and SGLang, like
vLLM's ``set_aux_hidden_state_layers`` used here, captures the residual stream *before*
running layer ``i + 1``. So their layer 11 is the residual stream after 12 decoder layers:
``layer`` 12 in this project's convention (``vllm/runner.py``), Hugging Face's
``output_hidden_states[12]``.

The file is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, never code from a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe.file import LoadedProbe, ProbeFileError, load_probe, save_probe
from trail_scheduler.probe.model import LengthProbe

# Releases whose origin is known by the source file's sha256 (a Git LFS object id is the
# sha256 of the file): provenance is then recorded as verified, not as the user says.
_AUTHORS = "harvard-cns/TRAIL-llm-scheduling"
_AUTHORS_COMMIT = "3c4bcd6a4a60b3f46dc641cc022e05d826bcf496"
KNOWN_RELEASES: dict[str, dict[str, str]] = {
    "2a990400e714f327502983ef111c75b04fe47412cc065b5fa7835cbe50e1d263": {
        "repository": _AUTHORS,
        "path": "predictors/mlp_layer11/model.pt",
        "commit": _AUTHORS_COMMIT,
        "url": f"https://github.com/{_AUTHORS}/blob/{_AUTHORS_COMMIT}/predictors/mlp_layer11/model.pt",
        "license": "Apache-2.0",
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
    },
}

# config.json key, and the alternative names the authors' runtime also reads.
_CONFIG_KEYS = {
    "hidden_size": ("hidden_size", "input_dim"),
    "hidden_dim": ("hidden_dim", "intermediate_size"),
    "num_labels": ("num_labels",),
    "max_len": ("max_len", "max_position"),
    "probe_layer_idx": ("probe_layer_idx", "layer_idx"),
}
# Key prefixes of the two Linear layers, as the authors' runtime accepts them.
_LAYOUTS = (("fc1.", "fc2."), ("0.", "2."), ("layers.0.", "layers.2."))


@dataclass(frozen=True)
class SourceConfig:
    """The authors' ``config.json``: the MLP's sizes, the bins and the layer it reads."""

    hidden_size: int
    hidden_dim: int
    num_labels: int
    max_len: float
    probe_layer_idx: int
    raw: dict[str, Any]

    @property
    def layer(self) -> int:
        """This project's layer index for their ``probe_layer_idx`` (see the module docstring)."""
        return self.probe_layer_idx + 1


def read_source_config(path: str | os.PathLike[str]) -> SourceConfig:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as error:
        raise ProbeFileError(f"cannot read config {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProbeFileError(f"config {path} is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ProbeFileError(f"config {path} must be a JSON object, got {type(raw).__name__}")
    values: dict[str, Any] = {}
    for field, names in _CONFIG_KEYS.items():
        value = next((raw[name] for name in names if name in raw), None)
        if value is None:
            raise ProbeFileError(f"config {path} has no {' or '.join(repr(n) for n in names)}")
        values[field] = value
    for field, minimum in (("hidden_size", 1), ("hidden_dim", 1), ("num_labels", 2), ("probe_layer_idx", 0)):
        value = values[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ProbeFileError(f"config {path}: {field} must be an integer >= {minimum}, got {value!r}")
    max_len = values["max_len"]
    if isinstance(max_len, bool) or not isinstance(max_len, int | float) or not max_len > 0:
        raise ProbeFileError(f"config {path}: max_len must be a number > 0, got {max_len!r}")
    return SourceConfig(**values, raw=raw)


def read_source_weights(path: str | os.PathLike[str], config: SourceConfig) -> dict[str, torch.Tensor]:
    """The state dict as ``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``, shapes checked."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ProbeFileError(f"source file not found: {path}") from None
    except Exception as error:  # UnpicklingError for code in the pickle, RuntimeError for a non-torch file
        raise ProbeFileError(
            f"{path} is not a PyTorch state dict that loads with weights_only=True "
            f"(tensors only, no pickled code): {_load_failure(error)}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = {k: type(v).__name__ for k, v in state.items()} if isinstance(state, dict) else type(state).__name__
        raise ProbeFileError(f"{path} must hold a flat state dict of tensors, got {kinds}")
    keys = set(state)
    for first, second in _LAYOUTS:
        names = {f"{first}weight", f"{first}bias", f"{second}weight", f"{second}bias"}
        if keys == names:
            tensors = {
                "fc1.weight": state[f"{first}weight"],
                "fc1.bias": state[f"{first}bias"],
                "fc2.weight": state[f"{second}weight"],
                "fc2.bias": state[f"{second}bias"],
            }
            break
    else:
        expected = " or ".join(f"{a}weight/bias + {b}weight/bias" for a, b in _LAYOUTS)
        raise ProbeFileError(f"{path} has keys {sorted(keys)}; expected exactly {expected}")
    h, u, k = config.hidden_size, config.hidden_dim, config.num_labels
    shapes = {"fc1.weight": [u, h], "fc1.bias": [u], "fc2.weight": [k, u], "fc2.bias": [k]}
    for name, tensor in tensors.items():
        if list(tensor.shape) != shapes[name]:
            raise ProbeFileError(
                f"{path}: {name} has shape {list(tensor.shape)}, the config implies {shapes[name]} "
                f"(hidden_size={h}, hidden_dim={u}, num_labels={k})"
            )
        if not tensor.is_floating_point():
            raise ProbeFileError(f"{path}: {name} has dtype {tensor.dtype}, expected floating point")
    return tensors


def _load_failure(error: Exception) -> str:
    """The reason in torch's message, without its advice to load the file unsafely."""
    text = str(error)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    if reason:
        return " ".join(reason.group(1).split())
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def import_probe(
    source: str | os.PathLike[str],
    config_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    layer: int | None = None,
    origin: str | None = None,
) -> LoadedProbe:
    """Convert the authors' ``model.pt`` + ``config.json`` into a probe file at ``out``.

    ``model`` and ``origin`` default to the known release's when the source file is one;
    ``layer`` defaults to the config's ``probe_layer_idx + 1``. Returns the written file,
    loaded back. Raises
    :class:`ProbeFileError` on anything unexpected. The output depends only on the inputs,
    so importing the same release gives the same file and sha256 everywhere.
    """
    config = read_source_config(config_path)
    tensors = read_source_weights(source, config)
    source_sha256 = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    release = KNOWN_RELEASES.get(source_sha256, {})
    model = model or release.get("model")
    if not model:
        raise ProbeFileError(
            f"{source} (sha256 {source_sha256}) is not a known release: say which LLM it reads with --model"
        )
    probe = LengthProbe(config.hidden_size, config.num_labels, config.hidden_dim)
    probe.load_state_dict({name: t.to(torch.float32) for name, t in tensors.items()})
    bins = LengthBins.uniform(config.num_labels, float(config.max_len))
    provenance = {"sha256": source_sha256, **release}
    if origin or not release:
        provenance["origin"] = origin  # None: an unknown file whose origin nobody stated
    training = {
        "kind": "imported",
        "source": provenance,
        "source_config": config.raw,
        "source_config_sha256": hashlib.sha256(Path(config_path).read_bytes()).hexdigest(),
        "layer_convention": (
            f"source probe_layer_idx {config.probe_layer_idx} = output of 0-based decoder layer "
            f"{config.probe_layer_idx} = residual stream after {config.layer} decoder layers "
            f"= layer {config.layer} here"
        ),
    }
    if layer is not None and layer != config.layer:
        training["layer_override"] = layer
    try:
        save_probe(probe, bins, out, model=model, layer=config.layer if layer is None else layer, training=training)
    except OSError as error:
        raise ProbeFileError(f"cannot write {out}: {error.strerror}") from None
    return load_probe(out)


__all__ = ["KNOWN_RELEASES", "SourceConfig", "import_probe", "read_source_config", "read_source_weights"]
