"""Length probes: the module that reads a hidden state, and its file format.

Torch and safetensors only (no vLLM); :mod:`trail_scheduler.probe.file` defines the format.
"""

from trail_scheduler.probe.file import (
    FORMAT_VERSION,
    PROMPT_READINGS,
    LoadedProbe,
    ProbeFileError,
    check_fits,
    load_probe,
    save_probe,
    weights_sha256,
)
from trail_scheduler.probe.model import LengthProbe

__all__ = [
    "FORMAT_VERSION",
    "LengthProbe",
    "LoadedProbe",
    "PROMPT_READINGS",
    "ProbeFileError",
    "check_fits",
    "load_probe",
    "save_probe",
    "weights_sha256",
]
