"""The probe header parser against hostile files: every one is a ProbeFormatError, never a crash.

Also checks that the parser stays importable without torch (the operator uses it).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from trail_contract.probe_format import (
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    MAX_TENSORS,
    ProbeFormatError,
    read_header,
)
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LengthProbe, load_probe, save_probe
from trail_scheduler.probe.file import ProbeFileError


def safetensors(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def probe_header(trail: str = '{"a": 1}', **tensors) -> dict:
    return {"__metadata__": {"trail": trail}, **tensors}


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

# name -> (file bytes, part of the message)
HOSTILE = {
    "empty": (b"", "too short"),
    "header length 2**64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", "exceeds the file size"),
    "header over the limit": (
        struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * (MAX_HEADER_BYTES + 1),
        "over the",
    ),
    "header not UTF-8": (struct.pack("<Q", 2) + b"\xff\xfe", "not UTF-8"),
    "deeply nested header": (safetensors("[" * 100_000 + "]" * 100_000), "nested deeper"),
    "nested just past the bound": (
        safetensors("{" + '"x":[' * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"),
        "nested deeper",
    ),
    "integer 2**64": (safetensors('{"x": ' + str(2**64) + "}"), "out of range"),
    "integer of 5000 digits": (safetensors('{"x": ' + "9" * 5000 + "}"), "out of range"),
    "NaN": (safetensors('{"x": NaN}'), "not a JSON number"),
    "Infinity": (safetensors('{"x": -Infinity}'), "not a JSON number"),
    "1e999": (safetensors('{"x": 1e999}'), "out of range"),
    "duplicate key": (safetensors('{"x": 1, "x": 2}'), "duplicate key 'x'"),
    "header is a list": (safetensors("[]"), "not a JSON object"),
    "metadata value not a string": (safetensors({"__metadata__": {"trail": {"a": 1}}}), "must be strings"),
    "trail metadata nested deep": (safetensors(probe_header(trail="[" * 5000 + "]" * 5000)), "nested deeper"),
    "trail metadata huge integer": (safetensors(probe_header(trail='{"layer": ' + "1" * 400 + "}")), "out of range"),
    "trail metadata a list": (safetensors(probe_header(trail="[1]")), "must be a JSON object"),
    "no metadata": (safetensors({}), "no TRAIL metadata"),
    "unknown dtype": (safetensors(probe_header(w={**F32_2, "dtype": "F128"}), b"\0" * 8), "unknown dtype"),
    "negative dimension": (safetensors(probe_header(w={**F32_2, "shape": [-2]}), b"\0" * 8), "invalid shape"),
    "boolean dimension": (safetensors(probe_header(w={**F32_2, "shape": [True]}), b"\0" * 8), "invalid shape"),
    "offsets past the file": (
        safetensors(probe_header(w={**F32_2, "data_offsets": [0, 2**40]}), b"\0" * 8),
        "does not span",
    ),
    "offsets reversed": (
        safetensors(probe_header(w={**F32_2, "data_offsets": [8, 0]}), b"\0" * 8),
        "does not span",
    ),
    "shape too large for the file": (
        safetensors(probe_header(w={"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 2**62]}), b""),
        "span",
    ),
    "overlapping tensors": (
        safetensors(probe_header(a=F32_2, b=F32_2), b"\0" * 16),
        "overlap",
    ),
    "bytes left over": (safetensors(probe_header(w=F32_2), b"\0" * 12), "the file holds 12"),
    "extra key in a tensor": (safetensors(probe_header(w={**F32_2, "x": 1}), b"\0" * 8), "exactly dtype"),
    "too many tensors": (
        safetensors(
            probe_header(**{f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100)})
        ),
        f"over the {MAX_TENSORS} limit",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_headers_are_refused_with_a_reason(case):
    data, message = HOSTILE[case]
    with pytest.raises(ProbeFormatError) as caught:
        read_header(data)
    assert message in str(caught.value)
    with pytest.raises(ProbeFileError) as loaded:  # the loader goes through the same parser
        load_probe(data)
    assert str(loaded.value) == str(caught.value)


def test_brackets_inside_strings_do_not_count_as_nesting():
    header = read_header(safetensors(probe_header(trail=json.dumps({"note": "[" * 1000}))))
    assert header.trail == {"note": "[" * 1000} and header.tensors == {}


def test_a_real_probe_file_reads_back(tmp_path):
    path = tmp_path / "p.safetensors"
    save_probe(LengthProbe(16, 4, 8), LengthBins.uniform(4, 64), path, model="m", layer=3, training={})
    header = read_header(path.read_bytes())
    assert header.trail["hidden_size"] == 16 and header.trail["layer"] == 3
    assert {name: info.shape for name, info in header.tensors.items()} == {
        "fc1.weight": (8, 16),
        "fc1.bias": (8,),
        "fc2.weight": (4, 8),
        "fc2.bias": (4,),
    }
    assert all(info.dtype == "F32" for info in header.tensors.values())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bin_edges", list(range(300)), "299 bins; a probe has 2 to 256"),
        ("bin_edges", [0, 5], "1 bins; a probe has 2 to 256"),
        ("hidden_size", 2**40, "'hidden_size' must be an integer >= 1, <= 65536"),
        ("hidden_units", 10**6, "'hidden_units' must be an integer >= 1, <= 65536"),
        ("layer", 5000, "'layer' must be an integer >= 0, <= 1024"),
        ("model", "x" * 100_000, "'model' must be a non-empty string (1024 at most), got 'xxx"),
    ],
)
def test_probe_shapes_are_bounded(tmp_path, field, value, message):
    path = tmp_path / "p.safetensors"
    save_probe(LengthProbe(16, 4, 8), LengthBins.uniform(4, 64), path, model="m", layer=3, training={})
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    trail = json.loads(header["__metadata__"]["trail"])
    trail[field] = value
    header["__metadata__"]["trail"] = json.dumps(trail)
    with pytest.raises(ProbeFileError) as caught:
        load_probe(safetensors(header, data[8 + length :]))
    assert message in str(caught.value) and len(str(caught.value)) < 600


def test_the_parser_needs_no_torch():
    code = "import sys, trail_contract.probe_format; print(sorted(m for m in sys.modules if m in ('torch', 'numpy')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
