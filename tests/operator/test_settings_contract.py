"""The CRD's ``spec.scheduler`` and the settings model are one contract: held equal here.

Adding a setting to :class:`trail_contract.settings.SchedulerSettings` without the CRD (or the
other way round), or giving them different defaults or ranges, fails this test.
"""

from __future__ import annotations

from typing import Any

from trail_contract.settings import SETTING_KEYS, SchedulerSettings
from trail_operator import crd


def crd_scheduler() -> dict[str, Any]:
    return crd.openapi_schema()["properties"]["spec"]["properties"]["scheduler"]["properties"]


def model_properties() -> dict[str, dict[str, Any]]:
    schema = SchedulerSettings.model_json_schema(by_alias=True)
    properties = {}
    for key, prop in schema["properties"].items():
        branch = next((b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"), prop)
        if "$ref" in branch:  # a choice: the Enum's values
            branch = schema["$defs"][branch["$ref"].rsplit("/", 1)[-1]]
        properties[key] = {**branch, "default": prop.get("default")}
    return properties


def bounds(prop: dict[str, Any]) -> dict[str, float]:
    """Ranges in one spelling: the CRD's OpenAPI v3 (exclusiveMinimum: true) or JSON Schema's."""
    found = {key: float(prop[key]) for key in ("minimum", "maximum") if key in prop}
    if prop.get("exclusiveMinimum") is True:
        found["exclusiveMinimum"] = found.pop("minimum")
    elif "exclusiveMinimum" in prop:
        found["exclusiveMinimum"] = float(prop["exclusiveMinimum"])
    return found


def test_the_crd_has_exactly_the_models_settings_and_the_probe() -> None:
    """Plus the probe and the hosts pods may fetch probes from (the operator's, not settings)."""
    assert set(crd_scheduler()) == set(SETTING_KEYS) | {"probe", "probeHosts"}


def test_types_defaults_and_ranges_agree() -> None:
    ours, theirs = model_properties(), crd_scheduler()
    for key in SETTING_KEYS:
        mine, crds = ours[key], theirs[key]
        assert mine["type"] == crds["type"], key
        assert mine.get("enum") == crds.get("enum"), key
        assert mine["default"] == crds.get("default"), key
        assert bounds(mine) == bounds(crds), key


def test_the_wire_names_are_the_crds() -> None:
    """The admin API's and the settings file's keys are the CRD's field names."""
    assert set(SchedulerSettings().wire()) == set(SETTING_KEYS)
