"""``spec.scheduler`` as the admin API's settings: the file in the ConfigMap a pod reads
at start, the body of the PUT to a running pod, and the generation stamped on them.

The settings live only in the ConfigMap, never in the pod template, so a change to
``spec.scheduler`` reaches running pods without rolling them (except the hosts pods may
fetch probes from, ``--probe-host``, a start-up flag).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from trail_contract.admin_api import ConfigUpdate, read_settings_file, settings_file_text
from trail_contract.settings import SETTING_KEYS
from trail_operator.layout import MODELS_DIR, SCHEDULER_DIR, SCHEDULER_FILE, Owner, metadata, names
from trail_operator.spec import LLMServerSpec

PROBE_FILE = "probe.bin"  # a configMapKeyRef probe's copy, next to the settings file


def probe_sha256(spec: LLMServerSpec, probe_data: bytes | None) -> str | None:
    """The sha256 pods should report for the probe in ``spec`` (None: no probe)."""
    probe = spec.scheduler.probe
    if probe is None:
        return None
    if probe.config_map_key_ref is not None:
        if probe_data is None:
            raise ValueError("a configMapKeyRef probe needs its bytes (probe_data)")
        return hashlib.sha256(probe_data).hexdigest()
    return probe.sha256


def scheduler_update(spec: LLMServerSpec, generation: int, probe_data: bytes | None, *, live: bool) -> dict[str, Any]:
    """The admin API body (camelCase) for ``spec.scheduler``.

    ``live=False`` is the ConfigMap file a pod reads at start: a ConfigMap probe is the
    copy mounted next to it. ``live=True`` is the PUT to a running pod: the probe bytes
    travel inline. Validated through the shared wire model, so a body the pod would
    refuse fails here first.
    """
    body: dict[str, Any] = {**spec.scheduler.wire(), "generation": generation}
    probe = spec.scheduler.probe
    if probe is not None:
        sha = probe_sha256(spec, probe_data)
        if probe.config_map_key_ref is not None:
            assert probe_data is not None
            body["probe"] = (
                {"data": base64.b64encode(probe_data).decode()}
                if live
                else {"url": f"file://{SCHEDULER_DIR}/{PROBE_FILE}", "sha256": sha}
            )
        elif probe.url is not None:
            body["probe"] = {"url": probe.url, "sha256": sha}
        else:
            body["probe"] = {"url": f"file://{MODELS_DIR}/{probe.path}", "sha256": sha}
    ConfigUpdate.model_validate(body)  # raises if a pod would refuse it
    return body


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two admin-API settings dicts (update or view) agree on the tunable knobs."""
    return all(a.get(key) == b.get(key) for key in SETTING_KEYS)


def scheduler_generation(
    stored: dict[str, Any] | None, desired: dict[str, Any], meta_generation: int | None, desired_sha: str | None
) -> int:
    """The generation to stamp on the settings: unchanged while the settings are, else a
    new one (the resource's metadata.generation, and always above the stored one)."""
    stored_sha = ((stored or {}).get("probe") or {}).get("sha256")
    if stored is not None and same_settings(stored, desired) and stored_sha == desired_sha:
        return int(stored.get("generation") or 0)
    previous = int(stored.get("generation") or 0) if stored else 0
    return max(int(meta_generation or 0), previous + 1)


def build_configmap(owner: Owner, spec: LLMServerSpec, generation: int, probe_data: bytes | None) -> dict[str, Any]:
    # The probe's sha256 in the file also tells a restarted operator which probe it holds.
    settings = ConfigUpdate.model_validate(scheduler_update(spec, generation, probe_data, live=False))
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, names(owner)["configmap"]),
        "data": {SCHEDULER_FILE: settings_file_text(settings)},
    }
    if spec.scheduler.probe is not None and spec.scheduler.probe.config_map_key_ref is not None:
        assert probe_data is not None
        configmap["binaryData"] = {PROBE_FILE: base64.b64encode(probe_data).decode()}
    return configmap


def stored_settings(configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The settings file inside an existing scheduler ConfigMap (None if absent/unreadable)."""
    try:
        text = ((configmap or {}).get("data") or {})[SCHEDULER_FILE]
        return read_settings_file(text).model_dump(mode="json", by_alias=True, exclude_unset=True)
    except (KeyError, TypeError, ValueError):
        return None
