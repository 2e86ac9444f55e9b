"""The scheduler settings and the pod admin API's wire models: the one definition both sides use.

``trail serve`` validates requests with these; the operator builds its live-retune
calls with them. Field names on the wire are the CRD's camelCase names. Only
pydantic here, so the operator can import it without the engine stack.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

ADMIN_PREFIX = "/trail/v1"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


MAX_C = 1000.0  # beyond this `c` means "always preemptible"; larger values are typos
# Documented maxima: far beyond any useful value, low enough that none overflows in the engine.
MAX_PREDICT_EVERY = 1_000_000  # tokens; longer than any context
MAX_WAIT_SECONDS = 604_800.0  # one week
MAX_PREEMPTION_MARGIN = 1_000_000.0  # tokens
MAX_PREEMPTIONS = 1_000_000
MAX_PROBE_RANKS_AFTER = 1_000_000  # tokens; longer than any context
MAX_RECOMPUTE_TOKEN_COST = 1000.0  # decode steps per token; far beyond any engine
MAX_GUARD_WINDOW = 10_000  # finished requests; the rank correlation is recomputed over it at every finish
MAX_GENERATION = 2**63 - 1  # an int64, as Kubernetes' metadata.generation
# The shipped starvation guard (measured in docs/studies/2026-11-old-bench-protocol.md): a
# request is preempted at most once, so shortest-first cannot make it recompute again and
# again, and one waiting longer than this is served in arrival order and not preempted.
DEFAULT_MAX_WAIT_SECONDS = 300.0
DEFAULT_MAX_PREEMPTIONS = 1
MAX_URL_LENGTH = 2048
MAX_INLINE_PROBE_CHARS = 8 * 1024 * 1024  # base64 of a 6 MiB probe; larger probes go by URL


class PolicyName(str, Enum):
    FCFS = "fcfs"
    SJF = "sjf"
    TRAIL = "trail"
    TRAIL_ORACLE = "trail-oracle"

    @property
    def preempts_for_order(self) -> bool:
        return self in (PolicyName.TRAIL, PolicyName.TRAIL_ORACLE)


class RefinementPrior(str, Enum):
    """Where a request's length belief starts before the probe refines it along the answer."""

    PROBE = "probe"  # the probe's reading of the prompt (p⁰), as the paper does
    PROMPT = "prompt"  # the prompt predictor's distribution; the probe's reading of the prompt is not used
    BOTH = "both"  # the prompt predictor's distribution, updated by the probe's reading of the prompt


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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A rejected value for a message, cut short (it may be a megabyte of someone's JSON)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


class SchedulerSettings(_Wire):
    """The scheduler's tunable settings: the one definition that the policy, the admin API,
    the engine, ``trail serve``'s flags, the metrics and the operator use, and that the
    CRD's ``spec.scheduler`` (minus the probe) is held equal to by a test.

    Values are checked strictly here, once: a string or a boolean is never a number.
    """

    model_config = ConfigDict(frozen=True)

    policy: PolicyName = Field(default=PolicyName.TRAIL, description="fcfs, sjf, trail or trail-oracle")
    c: float = Field(
        default=0.8,
        ge=0,
        le=MAX_C,
        description="preemption threshold: preemptible while generated < c x first prediction",
    )
    predict_every: int = Field(default=1, ge=1, le=MAX_PREDICT_EVERY, description="run the probe every k tokens")
    max_wait_seconds: float | None = Field(
        default=DEFAULT_MAX_WAIT_SECONDS,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="starvation bound: a request waiting longer is admitted first and no longer preempted "
        "(null turns the guard off)",
    )
    preemption_margin: float = Field(
        default=0.0,
        ge=0,
        le=MAX_PREEMPTION_MARGIN,
        description="preempt only for a request shorter by more than this many tokens",
    )
    max_preemptions: int | None = Field(
        default=DEFAULT_MAX_PREEMPTIONS,
        ge=0,
        le=MAX_PREEMPTIONS,
        description="preemptions one request can suffer at most (null: no cap)",
    )
    refinement_prior: RefinementPrior = Field(
        default=RefinementPrior.PROBE,
        description="where a request's length belief starts: probe (the probe's reading of the prompt), "
        "prompt (the prompt predictor's distribution) or both",
    )

    evidence_weight: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="exponent on each probe reading when it updates a request's length belief: 1 counts every "
        "reading as independent evidence (the paper's); lower values temper readings that repeat token after token",
    )

    probe_ranks_after: int = Field(
        default=0,
        ge=0,
        le=MAX_PROBE_RANKS_AFTER,
        description="tokens a request generates before the probe's belief, rather than the prompt estimate it was "
        "admitted on, ranks it (0: from the probe's first reading)",
    )

    preemption_by_benefit: bool = Field(
        default=False,
        description="preempt a running request only when the newcomer's expected remaining length is shorter by "
        "more than one standard deviation of the difference plus the victim's recompute cost (c stays the limit)",
    )
    recompute_token_cost: float = Field(
        default=0.01,
        ge=0,
        le=MAX_RECOMPUTE_TOKEN_COST,
        description="decode steps one prompt or generated token costs when a preempted request is prefilled "
        "again (read with preemptionByBenefit)",
    )

    prediction_guard: bool = Field(
        default=False,
        description="measure how well the first length predictions rank finished requests and how often a "
        "preemption is regretted, and fall back (no preemption, then arrival order) while they are weak",
    )
    prediction_guard_window: int = Field(
        default=200,
        ge=10,
        le=MAX_GUARD_WINDOW,
        description="finished requests (and resolved preemptions) the prediction guard measures over",
    )
    prediction_guard_min_samples: int = Field(
        default=50,
        ge=2,
        le=MAX_GUARD_WINDOW,
        description="samples the prediction guard needs before it changes level, and finished requests between "
        "two changes (at most the window)",
    )
    prediction_guard_min_rank_correlation: float = Field(
        default=0.2,
        ge=-1,
        le=1,
        description="below this rank correlation between first predictions and lengths the prediction guard "
        "falls back one level",
    )
    prediction_guard_max_regret_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="above this share of regretted preemptions (the victim had less left than its displacer) "
        "the prediction guard stops preempting",
    )
    prediction_guard_hysteresis: float = Field(
        default=0.1,
        ge=0,
        le=2,
        description="how far above its threshold the rank correlation must be before the prediction guard "
        "trusts the predictions one level more",
    )

    @field_validator("policy", "refinement_prior", mode="before")
    @classmethod
    def _known_choice(cls, value: Any, info: ValidationInfo) -> Enum:
        choices = cls.model_fields[info.field_name].annotation
        try:
            return choices(value)
        except ValueError:
            names = ", ".join(c.value for c in choices)
            what = info.field_name.replace("_", " ")
            raise ValueError(f"unknown {what} {_shown(value)}; expected one of: {names}") from None

    @field_validator("c", mode="before")
    @classmethod
    def _c_in_range(cls, value: Any) -> Any:
        if not (_is_number(value) and 0.0 <= value <= MAX_C):
            raise ValueError(f"c must be a finite number between 0 and {MAX_C:g}, got {_shown(value)}")
        return value

    @field_validator("predict_every", mode="before")
    @classmethod
    def _positive_interval(cls, value: Any) -> Any:
        if not (_is_integer(value) and 1 <= value <= MAX_PREDICT_EVERY):
            raise ValueError(f"predict_every must be an integer from 1 to {MAX_PREDICT_EVERY}, got {_shown(value)}")
        return value

    @field_validator("max_wait_seconds", mode="before")
    @classmethod
    def _positive_wait(cls, value: Any) -> Any:
        if value is not None and not (_is_number(value) and 0 < value <= MAX_WAIT_SECONDS):
            raise ValueError(
                f"max_wait_seconds must be a positive number up to {MAX_WAIT_SECONDS:g}, or null to turn it off; "
                f"got {_shown(value)}"
            )
        return value

    @field_validator("preemption_margin", mode="before")
    @classmethod
    def _margin(cls, value: Any) -> Any:
        if not (_is_number(value) and 0 <= value <= MAX_PREEMPTION_MARGIN):
            raise ValueError(
                f"preemption_margin must be from 0 to {MAX_PREEMPTION_MARGIN:g} tokens, got {_shown(value)}"
            )
        return value

    @field_validator("evidence_weight", mode="before")
    @classmethod
    def _weight(cls, value: Any) -> Any:
        if not (_is_number(value) and 0 < value <= 1):
            raise ValueError(f"evidence_weight must be a number above 0 and at most 1, got {_shown(value)}")
        return value

    @field_validator("probe_ranks_after", mode="before")
    @classmethod
    def _tokens_before_the_probe_ranks(cls, value: Any) -> Any:
        if not (_is_integer(value) and 0 <= value <= MAX_PROBE_RANKS_AFTER):
            raise ValueError(
                f"probe_ranks_after must be an integer from 0 to {MAX_PROBE_RANKS_AFTER} tokens, got {_shown(value)}"
            )
        return value

    @field_validator("preemption_by_benefit", "prediction_guard", mode="before")
    @classmethod
    def _switch(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be true or false, got {_shown(value)}")
        return value

    @classmethod
    def _field_bounds(cls, name: str) -> tuple[float, float]:
        """A field's ``ge`` and ``le`` (one statement of each range: the Field's)."""
        found = {type(m).__name__: m for m in cls.model_fields[name].metadata}
        return found["Ge"].ge, found["Le"].le

    @field_validator("prediction_guard_window", "prediction_guard_min_samples", mode="before")
    @classmethod
    def _guard_count(cls, value: Any, info: ValidationInfo) -> Any:
        low, high = cls._field_bounds(info.field_name)
        if not (_is_integer(value) and low <= value <= high):
            raise ValueError(f"{info.field_name} must be an integer from {low} to {high}, got {_shown(value)}")
        return value

    @field_validator(
        "recompute_token_cost",
        "prediction_guard_min_rank_correlation",
        "prediction_guard_max_regret_ratio",
        "prediction_guard_hysteresis",
        mode="before",
    )
    @classmethod
    def _guard_threshold(cls, value: Any, info: ValidationInfo) -> Any:
        low, high = cls._field_bounds(info.field_name)
        if not (_is_number(value) and low <= value <= high):
            raise ValueError(f"{info.field_name} must be a number from {low:g} to {high:g}, got {_shown(value)}")
        return value

    @field_validator("max_preemptions", mode="before")
    @classmethod
    def _cap(cls, value: Any) -> Any:
        if value is not None and not (_is_integer(value) and 0 <= value <= MAX_PREEMPTIONS):
            raise ValueError(
                f"max_preemptions must be an integer from 0 to {MAX_PREEMPTIONS} or null, got {_shown(value)}"
            )
        return value

    def wire(self) -> dict[str, Any]:
        """The settings alone (not what a subclass adds), as the admin API, the settings file and
        the CRD spell them (camelCase)."""
        return self.model_dump(mode="json", by_alias=True, include=set(SchedulerSettings.model_fields))


SETTING_KEYS = tuple(info.alias for info in SchedulerSettings.model_fields.values())  # camelCase, wire order
# The settings that name one of a set of choices, with the choices (an Enum), by field name.
CHOICE_SETTINGS = {
    name: info.annotation
    for name, info in SchedulerSettings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, Enum)
}


class ProbeSource(_Wire):
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
            raise ValueError(f"url must be http(s):// or file://, got {_shown(value)}")
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


class _Update(_Wire):
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


def explain(error: ValidationError, prefix: str = "") -> str:
    """A validation error as one line a user can act on: ``field: reason; …``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{prefix}{where}: {message}" if where else f"{prefix.rstrip('.') or 'value'}: {message}")
    return "; ".join(problems)


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


class ProbeInfo(_Wire):
    sha256: str
    layer: int
    hidden_size: int
    bins: list[float | str]
    model: str | None = None


class GuardView(_Wire):
    """The prediction guard's measures and level (null measures: too few samples yet)."""

    enabled: bool
    level: GuardLevel
    rank_correlation: float | None = Field(
        description="Spearman's, first predictions against lengths, over the window of finished requests"
    )
    regret_ratio: float | None = Field(
        description="share of resolved preemptions in the window where the victim had less left than its displacer"
    )
    samples: int = Field(description="finished requests in the window")
    min_samples: int = Field(description="samples it needs before it changes level (the setting, at most the window)")
    resolved_preemptions: int = Field(description="preemptions in the window whose two requests both finished")


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
    probe_failure: str | None = Field(default=None, description="as in the config: why the probe was dropped")
    predicted_backlog_tokens: float = Field(
        default=0.0, description="predicted remaining output tokens of every running and waiting request"
    )
    predicted_drain_seconds: float | None = Field(
        default=None, description="the backlog over the output rate measured while busy (None: no rate measured yet)"
    )
    prediction_guard: GuardView | None = Field(default=None, description="the prediction guard's measures and level")
