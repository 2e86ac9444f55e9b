"""The pod admin API's wire models (DESIGN.md §4): the one definition both sides use.

``trail serve`` validates requests with these; the operator builds its live-retune
calls with them. Field names on the wire are the CRD's camelCase names. Only
pydantic here, so the operator can import it without the engine stack.
"""

from __future__ import annotations

import json
import math
import re

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from trail_scheduler.core.policy import MAX_C, PolicyName

ADMIN_PREFIX = "/trail/v1"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ProbeSource(_Wire):
    """A new probe: fetched from ``url`` and checked against ``sha256``, or inline ``data``."""

    url: str | None = None
    sha256: str | None = None
    data: str | None = Field(default=None, description="base64 of the probe file")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_PATTERN.match(value.lower()):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSource:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of probe.url (with probe.sha256) or probe.data")
        if self.url is not None and self.sha256 is None:
            raise ValueError("probe.url needs probe.sha256 so the download can be verified")
        if self.url is not None and not self.url.startswith(("http://", "https://", "file://")):
            raise ValueError(f"probe.url must be http(s):// or file://, got {self.url!r}")
        return self


class ConfigUpdate(_Wire):
    """Body of ``PUT /trail/v1/config``: any subset of the settings.

    An explicit ``"maxWaitSeconds": null`` turns the starvation guard off; an absent
    field leaves the setting as it is.
    """

    policy: PolicyName | None = None
    c: float | None = None
    predict_every: int | None = Field(default=None, ge=1)
    max_wait_seconds: float | None = None
    preemption_margin: float | None = Field(default=None, ge=0)
    max_preemptions: int | None = Field(default=None, ge=0)
    generation: int | None = Field(default=None, ge=0)
    probe: ProbeSource | None = None

    @field_validator("c")
    @classmethod
    def _c_in_range(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= MAX_C):
            raise ValueError(f"c must be a finite number between 0 and {MAX_C:g}")
        return value

    @field_validator("max_wait_seconds")
    @classmethod
    def _positive_wait(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("maxWaitSeconds must be a positive number, or null to turn the guard off")
        return value


def settings_file_text(update: ConfigUpdate) -> str:
    """The scheduler settings file a pod reads at start (``trail serve --scheduler-config``).

    The operator writes it into the pod's ConfigMap and ``trail serve`` reads it back with
    :func:`read_settings_file`: both sides go through this module, so the file can only
    hold what the admin API's ``PUT`` accepts.
    """
    return json.dumps(update.model_dump(mode="json", by_alias=True, exclude_unset=True), indent=2, sort_keys=True)


def read_settings_file(text: str) -> ConfigUpdate:
    """Parse a settings file (JSON, or YAML for people writing one by hand); ValueError says why."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not JSON or YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"expected a mapping of settings, got {type(raw).__name__}")
    return ConfigUpdate.model_validate(raw or {})


class ProbeInfo(_Wire):
    sha256: str
    layer: int
    hidden_size: int
    bins: list[float | str]
    model: str | None = None


class ConfigView(_Wire):
    """Reply of ``GET /trail/v1/config``: the settings in force."""

    policy: PolicyName
    c: float
    predict_every: int
    max_wait_seconds: float | None
    preemption_margin: float = 0.0
    max_preemptions: int | None = None
    generation: int
    probe: ProbeInfo | None
    capture_layer: int | None = Field(default=None, description="the decoder layer the engine captures")


class RequestStats(_Wire):
    request_id: str
    generated_tokens: int
    predicted_remaining: float
    preemptible: bool | None = None
    preemptions: int = 0


class StatsView(_Wire):
    """Reply of ``GET /trail/v1/stats``."""

    policy: PolicyName
    num_running: int
    num_waiting: int
    running: list[RequestStats]
    waiting: list[RequestStats]
    preemptions_total: int
    last_decision_seconds: float = 0.0
    worker_probe_sha256: str | None = Field(
        default=None, description="the probe the workers' last readings came from (None before any)"
    )


class ErrorReply(_Wire):
    detail: str
