"""The scheduler settings model, with its choices, bounds and defaults. Only pydantic here,
so the operator can import it without the engine stack."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from trail_contract.wire import Wire, shown

MAX_C = 1000.0  # beyond this `c` means "always preemptible"; larger values are typos
# Documented maxima: far beyond any useful value, low enough that none overflows in the engine.
MAX_PREDICT_EVERY = 1_000_000  # tokens; longer than any context
MAX_WAIT_SECONDS = 604_800.0  # one week
MAX_PREEMPTION_MARGIN = 1_000_000.0  # tokens
MAX_PREEMPTIONS = 1_000_000
MAX_PROBE_RANKS_AFTER = 1_000_000  # tokens; longer than any context
MAX_RECOMPUTE_TOKEN_COST = 1000.0  # decode steps per token; far beyond any engine
MAX_GUARD_WINDOW = 10_000  # finished requests; the rank correlation is recomputed over it at every finish
# The shipped starvation guard (measured in docs/studies/2026-11-old-bench-protocol.md): a
# request is preempted at most once, so shortest-first cannot make it recompute again and
# again, and one waiting longer than this is served in arrival order and not preempted.
DEFAULT_MAX_WAIT_SECONDS = 300.0
DEFAULT_MAX_PREEMPTIONS = 1


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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SchedulerSettings(Wire):
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
            raise ValueError(f"unknown {what} {shown(value)}; expected one of: {names}") from None

    @field_validator("c", mode="before")
    @classmethod
    def _c_in_range(cls, value: Any) -> Any:
        if not (_is_number(value) and 0.0 <= value <= MAX_C):
            raise ValueError(f"c must be a finite number between 0 and {MAX_C:g}, got {shown(value)}")
        return value

    @field_validator("predict_every", mode="before")
    @classmethod
    def _positive_interval(cls, value: Any) -> Any:
        if not (_is_integer(value) and 1 <= value <= MAX_PREDICT_EVERY):
            raise ValueError(f"predict_every must be an integer from 1 to {MAX_PREDICT_EVERY}, got {shown(value)}")
        return value

    @field_validator("max_wait_seconds", mode="before")
    @classmethod
    def _positive_wait(cls, value: Any) -> Any:
        if value is not None and not (_is_number(value) and 0 < value <= MAX_WAIT_SECONDS):
            raise ValueError(
                f"max_wait_seconds must be a positive number up to {MAX_WAIT_SECONDS:g}, or null to turn it off; "
                f"got {shown(value)}"
            )
        return value

    @field_validator("preemption_margin", mode="before")
    @classmethod
    def _margin(cls, value: Any) -> Any:
        if not (_is_number(value) and 0 <= value <= MAX_PREEMPTION_MARGIN):
            raise ValueError(
                f"preemption_margin must be from 0 to {MAX_PREEMPTION_MARGIN:g} tokens, got {shown(value)}"
            )
        return value

    @field_validator("evidence_weight", mode="before")
    @classmethod
    def _weight(cls, value: Any) -> Any:
        if not (_is_number(value) and 0 < value <= 1):
            raise ValueError(f"evidence_weight must be a number above 0 and at most 1, got {shown(value)}")
        return value

    @field_validator("probe_ranks_after", mode="before")
    @classmethod
    def _tokens_before_the_probe_ranks(cls, value: Any) -> Any:
        if not (_is_integer(value) and 0 <= value <= MAX_PROBE_RANKS_AFTER):
            raise ValueError(
                f"probe_ranks_after must be an integer from 0 to {MAX_PROBE_RANKS_AFTER} tokens, got {shown(value)}"
            )
        return value

    @field_validator("preemption_by_benefit", "prediction_guard", mode="before")
    @classmethod
    def _switch(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be true or false, got {shown(value)}")
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
            raise ValueError(f"{info.field_name} must be an integer from {low} to {high}, got {shown(value)}")
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
            raise ValueError(f"{info.field_name} must be a number from {low:g} to {high:g}, got {shown(value)}")
        return value

    @field_validator("max_preemptions", mode="before")
    @classmethod
    def _cap(cls, value: Any) -> Any:
        if value is not None and not (_is_integer(value) and 0 <= value <= MAX_PREEMPTIONS):
            raise ValueError(
                f"max_preemptions must be an integer from 0 to {MAX_PREEMPTIONS} or null, got {shown(value)}"
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
