"""The pod admin API's wire models: the ``PUT /trail/v1/config`` body, the replies of
``GET /trail/v1/config`` and ``/stats``, and the settings file a pod reads at start.

``trail serve`` validates requests with these; the operator builds its live-retune calls
and the pods' settings files with them. Only pydantic (and yaml), so the operator can
import it without the engine stack.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, create_model, field_validator, model_validator

from trail_contract.settings import PolicyName, SchedulerSettings
from trail_contract.wire import Wire, shown

ADMIN_PREFIX = "/trail/v1"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_GENERATION = 2**63 - 1  # an int64, as Kubernetes' metadata.generation
MAX_URL_LENGTH = 2048
MAX_INLINE_PROBE_CHARS = 8 * 1024 * 1024  # base64 of a 6 MiB probe; larger probes go by URL


class GuardLevel(str, Enum):
    """How far the prediction guard has fallen back (core/guard.py): the policy as set, no
    preemption (as c = 0), or first come, first served."""

    TRUSTING = "trusting"
    NO_PREEMPTION = "no-preemption"
    ARRIVAL_ORDER = "arrival-order"

    @property
    def fallback(self) -> int:
        """0, 1 or 2: the level as a number (the trail_prediction_guard_level gauge)."""
        return list(GuardLevel).index(self)


class ProbeSource(Wire):
    """A new probe: fetched from ``url`` and checked against ``sha256``, or inline ``data``."""

    url: str | None = Field(default=None, strict=True, max_length=MAX_URL_LENGTH)
    sha256: str | None = Field(default=None, strict=True, max_length=64)
    data: str | None = Field(
        default=None,
        strict=True,
        min_length=1,
        max_length=MAX_INLINE_PROBE_CHARS,
        description="base64 of the probe file",
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_PATTERN.match(value.lower()):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower() if value else value

    @field_validator("url")
    @classmethod
    def _well_formed_url(cls, value: str | None) -> str | None:
        """Only well-formed http(s)/file URLs, so a fetch never fails on the URL's syntax."""
        if value is None:
            return value
        if not value.isascii() or not value.isprintable() or " " in value:
            raise ValueError("url must be printable ASCII without spaces (percent-encode the rest)")
        try:
            parts = urlsplit(value)
            port = parts.port  # raises on a port that is not a number from 0 to 65535
        except ValueError as error:
            raise ValueError(f"url is malformed: {error}") from None
        if parts.scheme not in ("http", "https", "file"):
            raise ValueError(f"url must be http(s):// or file://, got {shown(value)}")
        if parts.scheme == "file":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError("a file:// url names an absolute path on the pod: file:///path")
        elif not parts.hostname or port == 0 or parts.username is not None or parts.password is not None:
            raise ValueError("an http(s):// url needs a host, a port from 1 to 65535 if any, and no user:password")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSource:
        if (self.url is None) == (self.data is None):
            raise ValueError("give exactly one of probe.url (with probe.sha256) or probe.data")
        if self.url is not None and self.sha256 is None:
            raise ValueError("probe.url needs probe.sha256 so the download can be verified")
        return self


class _Update(Wire):
    """Body of ``PUT /trail/v1/config``: any subset of the settings, a generation, a probe.

    Its setting fields are :class:`SchedulerSettings`' own, each optional (see
    :data:`ConfigUpdate`). An explicit ``"maxWaitSeconds": null`` turns the starvation
    guard off; an absent field leaves the setting as it is. The settings given are checked
    by :class:`SchedulerSettings` itself (types strictly, ranges once), so a body is
    refused here with the same message the engine, the operator and ``trail serve`` give.
    """

    generation: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=MAX_GENERATION,
        description="the settings' generation; the engine refuses one lower than the one in force",
    )
    probe: ProbeSource | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_settings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            # Checked under the wire names, so an error names the field as the CRD and the API spell it.
            aliases = {name: info.alias for name, info in SchedulerSettings.model_fields.items()}
            wire = set(aliases.values())
            given = {aliases.get(key, key): value for key, value in data.items() if key in aliases or key in wire}
            SchedulerSettings.model_validate(given)  # raises with the setting's own message
        return data

    def changes(self) -> dict[str, Any]:
        """The settings this update sets (Python names)."""
        return {name: getattr(self, name) for name in SchedulerSettings.model_fields if name in self.model_fields_set}

    def applied_to(self, settings: SchedulerSettings) -> SchedulerSettings:
        return settings.model_copy(update=self.changes())


ConfigUpdate = create_model(
    "ConfigUpdate",
    __base__=_Update,
    __module__=__name__,
    **{name: (info.annotation | None, None) for name, info in SchedulerSettings.model_fields.items()},
)


def settings_file_text(update: _Update) -> str:
    """The scheduler settings file a pod reads at start (``trail serve --scheduler-config``).

    The operator writes it into the pod's ConfigMap and ``trail serve`` reads it back with
    :func:`read_settings_file`: both sides go through this module, so the file can only
    hold what the admin API's ``PUT`` accepts.
    """
    return json.dumps(update.model_dump(mode="json", by_alias=True, exclude_unset=True), indent=2, sort_keys=True)


def read_settings_file(text: str) -> _Update:
    """Parse a settings file (JSON, or YAML for people writing one by hand); ValueError says why."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not JSON or YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"expected a mapping of settings, got {type(raw).__name__}")
    return ConfigUpdate.model_validate(raw or {})


class ProbeInfo(Wire):
    sha256: str
    layer: int
    hidden_size: int
    bins: list[float | str]
    model: str | None = None


class GuardView(Wire):
    """The prediction guard's measures and level (null measures: too few samples yet)."""

    enabled: bool
    level: GuardLevel
    rank_correlation: float | None = Field(
        description="Somers' D of the first predictions (what preemption acts on) against the lengths, over the "
        "pairs whose order is known: two finished requests of the window, or one and a request in flight that "
        "has generated more (1: every pair in order, 0: chance, -1: every pair reversed)"
    )
    prompt_rank_correlation: float | None = Field(
        default=None, description="the same, of the prompt estimates (what orders the waiting queue)"
    )
    pairs: int = Field(default=0, description="pairs of requests in a known order the rank correlations rest on")
    regret_ratio: float | None = Field(
        description="share of resolved preemptions in the window where the victim had less left than its displacer"
    )
    samples: int = Field(description="finished requests in the window")
    min_samples: int = Field(description="samples it needs before it changes level (the setting, at most the window)")
    resolved_preemptions: int = Field(
        description="preemptions in the window whose outcome is known (one of the two finished, and the other "
        "finished too or has generated more than the finished one had left)"
    )


class ConfigView(SchedulerSettings):
    """Reply of ``GET /trail/v1/config``: the settings in force, their generation and the probe,
    and what the scheduler decides by after the prediction guard and a probe failure."""

    generation: int
    probe: ProbeInfo | None
    capture_layer: int | None = Field(default=None, description="the decoder layer the engine captures")
    probe_failure: str | None = Field(
        default=None,
        description="why the workers dropped the probe in force (ranking is first come, first served until a new "
        "probe is applied); null while it works",
    )
    effective_policy: PolicyName | None = Field(
        default=None,
        description="the policy the scheduler orders by: the one set, or fcfs while the prediction guard serves in "
        "arrival order or the probe has failed",
    )
    effective_c: float | None = Field(
        default=None, description="the c it decides by: the one set, or 0 while the prediction guard stops preemption"
    )
    prediction_guard_state: GuardView | None = Field(
        default=None, description="the prediction guard's level and measures, as in the stats"
    )


class RequestStats(Wire):
    request_id: str
    generated_tokens: int
    predicted_remaining: float
    preemptible: bool | None = None
    preemptions: int = 0


class StatsView(Wire):
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
    probe_failure: str | None = Field(default=None, description="as in the config: why the probe was dropped")
    predicted_backlog_tokens: float = Field(
        default=0.0, description="predicted remaining output tokens of every running and waiting request"
    )
    predicted_drain_seconds: float | None = Field(
        default=None, description="the backlog over the output rate measured while busy (None: no rate measured yet)"
    )
    prediction_guard: GuardView | None = Field(default=None, description="the prediction guard's measures and level")
