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

from trail_contract.admin_api import ConfigUpdate, ConfigView, ProbeSource, read_settings_file, settings_file_text
from trail_contract.settings import SchedulerSettings
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


def desired_settings(spec: LLMServerSpec, probe_data: bytes | None) -> ConfigUpdate:
    """``spec.scheduler`` as the settings file a pod reads at start, at generation 0.

    The one validation of the spec's settings in a pass, through the shared wire model, so
    settings a pod would refuse fail here first; the pass stamps the generation it picks
    (:func:`scheduler_generation`) and the live probe (:func:`live_settings`) on the model.
    A ConfigMap probe is the copy mounted next to the file.
    """
    body: dict[str, Any] = {**spec.scheduler.wire(), "generation": 0}
    probe = spec.scheduler.probe
    if probe is not None:
        if probe.config_map_key_ref is not None:
            url = f"file://{SCHEDULER_DIR}/{PROBE_FILE}"
        elif probe.url is not None:
            url = probe.url
        else:
            url = f"file://{MODELS_DIR}/{probe.path}"
        body["probe"] = {"url": url, "sha256": probe_sha256(spec, probe_data)}
    return ConfigUpdate.model_validate(body)


def live_settings(spec: LLMServerSpec, settings: ConfigUpdate, probe_data: bytes | None) -> ConfigUpdate:
    """``settings`` as the PUT to a running pod: a ConfigMap probe's bytes travel inline, as
    the kubelet refreshes a running pod's mounted copy only later. Only the probe is
    validated again: the settings already were."""
    probe = spec.scheduler.probe
    if probe is None or probe.config_map_key_ref is None:
        return settings
    assert probe_data is not None
    return settings.model_copy(update={"probe": ProbeSource(data=base64.b64encode(probe_data).decode())})


def same_settings(a: ConfigUpdate | ConfigView, b: ConfigUpdate | ConfigView) -> bool:
    """Whether two settings models (an update, a settings file, a pod's view) agree on the
    tunable knobs; a knob an update leaves unset counts as None."""
    return all(getattr(a, name) == getattr(b, name) for name in SchedulerSettings.model_fields)


def probe_sha_of(settings: ConfigUpdate | ConfigView) -> str | None:
    """The sha256 of the probe a settings file names or a pod runs (None: none, or inline)."""
    return settings.probe.sha256 if settings.probe is not None else None


def scheduler_generation(stored: ConfigUpdate | None, desired: ConfigUpdate, meta_generation: int | None) -> int:
    """The generation to stamp on the settings: unchanged while the settings and the probe's
    sha256 are, else a new one (the resource's metadata.generation, and always above the
    stored one)."""
    previous = (stored.generation or 0) if stored is not None else 0
    if stored is not None and same_settings(stored, desired) and probe_sha_of(stored) == probe_sha_of(desired):
        return previous
    return max(int(meta_generation or 0), previous + 1)


def build_configmap(
    owner: Owner, spec: LLMServerSpec, settings: ConfigUpdate, probe_data: bytes | None
) -> dict[str, Any]:
    # The probe's sha256 in the file also tells a restarted operator which probe it holds.
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


def stored_settings(configmap: dict[str, Any] | None) -> ConfigUpdate | None:
    """The settings file inside an existing scheduler ConfigMap (None if absent/unreadable)."""
    try:
        return read_settings_file(((configmap or {}).get("data") or {})[SCHEDULER_FILE])
    except (KeyError, TypeError, ValueError):
        return None
