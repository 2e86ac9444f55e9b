"""The probe file's safetensors header, read safely: the one parser of a probe file's structure.

A probe file comes from whoever may call the admin API or edit an ``LLMServer``, so its
header is read as hostile input: the 8-byte length, the header's size, JSON nesting,
integers and floats are bounded before or while parsing (never a ``RecursionError``, an
integer of thousands of digits, NaN or a duplicate key), and every tensor's offsets are
checked against the file. Stdlib only, so the operator can check a probe (its hidden size,
its layer) without torch, e.g. in an admission webhook.

Layout (safetensors): ``<u64 little-endian header length><JSON header><tensor bytes>``;
the header maps tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets into the bytes after the header, which the tensors cover exactly, in order)
and ``__metadata__`` to a ``{str: str}`` map whose ``"trail"`` entry is the probe's
metadata as a JSON object.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from trail_contract.errors import TrailError

METADATA_KEY = "trail"
MAX_HEADER_BYTES = 1024 * 1024  # a probe's header is a few KiB; its training record fits with room to spare
MAX_JSON_DEPTH = 32  # nesting of arrays and objects, in the header and in the trail metadata
MAX_INTEGER = 2**63 - 1  # any integer beyond int64 is refused, whatever its sign
MAX_TENSORS = 64
MAX_DIMENSIONS = 8
# Bounds of a probe's shape (checked by the probe file's loader and by the operator).
MIN_BINS, MAX_BINS = 2, 256
MAX_HIDDEN_SIZE = 65536  # the residual stream of the largest open models is ~16-25k wide
MAX_HIDDEN_UNITS = 65536
MAX_LAYER = 1024
# Which prompt state a probe's first prediction reads (metadata ``prompt_reading``); the first
# is the default of files without the field.
PROMPT_READINGS = ("mean", "last")

DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)  # strings (skipped) and brackets


class ProbeFormatError(TrailError):
    """A probe file whose structure cannot be read safely, with the reason."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the file (not into the data section): data[begin:end] are its bytes
    end: int


@dataclass(frozen=True)
class ProbeHeader:
    """What the header says: the tensors (name -> dtype, shape, byte range) and the trail metadata."""

    tensors: dict[str, TensorInfo]
    trail: dict[str, Any]


def read_header(data: bytes) -> ProbeHeader:
    """Parse and check a probe file's header; raise :class:`ProbeFormatError` saying why not.

    Only the header is parsed; the tensors' bytes are checked to be where the header says.
    """
    if len(data) < 8:
        raise ProbeFormatError(f"not a safetensors file: only {len(data)} bytes (too short for a header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ProbeFormatError(
            f"not a safetensors file or corrupt header: header length {header_len} exceeds the file size"
        )
    if header_len > MAX_HEADER_BYTES:
        raise ProbeFormatError(f"safetensors header is {header_len} bytes, over the {MAX_HEADER_BYTES} limit")
    try:
        text = data[8 : 8 + header_len].decode("utf-8")
    except UnicodeDecodeError:
        raise ProbeFormatError("not a safetensors file or corrupt header: header is not UTF-8") from None
    header = _parse_json(text, "not a safetensors file or corrupt header: header is not JSON")
    if not isinstance(header, dict):
        raise ProbeFormatError("not a safetensors file or corrupt header: header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    tensors = _tensors(header, len(data) - 8 - header_len, 8 + header_len)
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise ProbeFormatError(
            f"no TRAIL metadata: the safetensors header has no __metadata__[{METADATA_KEY!r}] (not a probe file?)"
        )
    if not isinstance(metadata[METADATA_KEY], str):
        raise ProbeFormatError("TRAIL metadata is not valid JSON: __metadata__ values must be strings")
    trail = _parse_json(metadata[METADATA_KEY], "TRAIL metadata is not valid JSON")
    if not isinstance(trail, dict):
        raise ProbeFormatError(f"TRAIL metadata must be a JSON object, got {type(trail).__name__}")
    return ProbeHeader(tensors=tensors, trail=trail)


def _tensors(entries: dict[str, Any], data_size: int, start: int) -> dict[str, TensorInfo]:
    if len(entries) > MAX_TENSORS:
        raise ProbeFormatError(f"corrupt safetensors data: {len(entries)} tensors, over the {MAX_TENSORS} limit")
    tensors = {}
    for name, entry in entries.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}):
            raise ProbeFormatError(
                f"corrupt safetensors data: tensor {name!r} needs exactly dtype, shape, data_offsets"
            )
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise ProbeFormatError(f"corrupt safetensors data: tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMENSIONS and all(_count(d) for d in shape)):
            raise ProbeFormatError(f"corrupt safetensors data: tensor {name!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
            raise ProbeFormatError(f"corrupt safetensors data: tensor {name!r} has invalid data_offsets")
        begin, end = offsets
        if math.prod(shape) * DTYPE_SIZES[dtype] != end - begin:
            raise ProbeFormatError(f"corrupt safetensors data: tensor {name!r} does not span its shape's bytes")
        tensors[name] = TensorInfo(dtype, tuple(shape), start + begin, start + end)
    position = start  # the tensors must cover the data exactly, back to back (safetensors' own rule)
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            raise ProbeFormatError("corrupt safetensors data: tensors overlap or leave gaps")
        position = info.end
    if position != start + data_size:
        raise ProbeFormatError(
            f"corrupt safetensors data: the tensors span {position - start} bytes, the file holds {data_size}"
        )
    return tensors


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_json(text: str, what: str) -> Any:
    """Strict, bounded JSON: depth checked before parsing, no NaN/inf, no huge integers, no duplicate keys."""
    depth = deepest = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise ProbeFormatError(f"{what}: nested deeper than {MAX_JSON_DEPTH} levels")
        elif token in "]}":
            depth -= 1
    try:
        return json.loads(
            text,
            parse_int=_integer,
            parse_float=_finite,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError, as are the hooks' refusals
        raise ProbeFormatError(f"{what} ({error})") from None


def _integer(token: str) -> int:
    if len(token.lstrip("-")) > len(str(MAX_INTEGER)) or abs(value := int(token)) > MAX_INTEGER:
        raise ValueError(f"integer {token[:24]}{'...' if len(token) > 24 else ''} is out of range")
    return value


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:24]} is out of range")
    return value


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"duplicate key {duplicate[:40]!r}")
    return result


__all__ = [
    "DTYPE_SIZES",
    "MAX_BINS",
    "MAX_HEADER_BYTES",
    "MAX_HIDDEN_SIZE",
    "MAX_HIDDEN_UNITS",
    "MAX_INTEGER",
    "MAX_JSON_DEPTH",
    "MAX_LAYER",
    "MAX_TENSORS",
    "METADATA_KEY",
    "MIN_BINS",
    "ProbeFormatError",
    "ProbeHeader",
    "TensorInfo",
    "read_header",
]
