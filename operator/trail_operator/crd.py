"""The LLMServer CRD, read from ``crds/llmserver.yaml`` (the single source of truth).

The operator applies the CRD's defaults itself (``apply_defaults``) because it must
behave the same when the API server has not (kmock in tests, objects stored before a
default was added): a real API server fills them in before we see the object.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import yaml

CRD_PATH_ENV = "TRAIL_CRD_PATH"
_REPO_CRD = Path(__file__).resolve().parents[2] / "crds" / "llmserver.yaml"

GROUP = "trail.dev"
VERSION = "v1alpha1"
PLURAL = "llmservers"
KIND = "LLMServer"
API_VERSION = f"{GROUP}/{VERSION}"


def crd_path() -> Path:
    """Where the CRD lives: $TRAIL_CRD_PATH (operator image), else the source checkout."""
    path = Path(os.environ.get(CRD_PATH_ENV) or _REPO_CRD)
    if not path.is_file():
        raise FileNotFoundError(
            f"LLMServer CRD not found at {path}; set {CRD_PATH_ENV} to the path of crds/llmserver.yaml"
        )
    return path


@functools.cache
def load_crd() -> dict[str, Any]:
    crd = yaml.safe_load(crd_path().read_text())
    names = crd["spec"]["names"]
    if (crd["spec"]["group"], names["plural"], names["kind"]) != (GROUP, PLURAL, KIND):
        raise ValueError(f"{crd_path()} does not define {PLURAL}.{GROUP} ({KIND})")
    return crd


def version_entry() -> dict[str, Any]:
    for entry in load_crd()["spec"]["versions"]:
        if entry["name"] == VERSION:
            return entry
    raise ValueError(f"{crd_path()} has no version {VERSION}")


def openapi_schema() -> dict[str, Any]:
    return version_entry()["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: fill absent fields that have a
    ``default`` (recursively, defaults themselves defaulted), returning a new value."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - schema.get("properties", {}).keys():
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return apply_defaults(openapi_schema()["properties"]["spec"], dict(spec or {}))
