"""The scheduler settings model, with its choices, bounds and defaults. Only pydantic here,
so the operator can import it without the engine stack."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, get_args

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


def _held(annotation: Any) -> tuple[Any, bool]:
    """The type a setting holds and whether it may be null: ``float | None`` is (float, True)."""
    kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
    return (kinds[0] if kinds else annotation), len(kinds) < len(get_args(annotation))


def _default_words(kind: type, above: bool, nullable: bool) -> str:
    if kind is int:
        words = "an integer from {low} to {high}"
    else:
        words = "a number above {low:g} and at most {high:g}" if above else "a number from {low:g} to {high:g}"
    return words + (" or null" if nullable else "")


# How a range is said where the words above would not do; the bounds are the Fields'.
_RANGE_WORDS = {
    "c": "a finite number between {low:g} and {high:g}",
    "max_wait_seconds": "a positive number up to {high:g} (null turns the guard off)",
    "preemption_margin": "from {low:g} to {high:g} tokens",
    "probe_ranks_after": "an integer from {low} to {high} tokens",
}


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
        default=True,
        description="measure how well the length predictions rank the requests and how often a preemption is "
        "regretted, and fall back (no preemption, or arrival order) while they are weak",
    )
    prediction_guard_window: int = Field(
        default=200,
        ge=10,
        le=MAX_GUARD_WINDOW,
        description="finished requests (and resolved preemptions) the prediction guard measures over",
    )
    prediction_guard_min_samples: int = Field(
        default=8,
        ge=2,
        le=MAX_GUARD_WINDOW,
        description="finished requests the prediction guard needs before it changes level, and between two "
        "changes (at most the window)",
    )
    prediction_guard_min_rank_correlation: float = Field(
        default=0.0,
        ge=-1,
        le=1,
        description="below this rank correlation (Somers' D, 0: chance) by more than its standard error, the "
        "prediction guard stops preempting (first predictions) or serves in arrival order (prompt estimates)",
    )
    prediction_guard_max_regret_ratio: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="above this share of regretted preemptions (the victim had less left than its displacer) "
        "by more than its standard error, the prediction guard stops preempting",
    )
    prediction_guard_hysteresis: float = Field(
        default=0.1,
        ge=0,
        le=2,
        description="how far above its threshold a rank correlation must be before the prediction guard "
        "trusts that prediction again",
    )

    # A choice by its value, and an unknown one refused with the list (pydantic's enum error names none).
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

    @field_validator("*", mode="before")
    @classmethod
    def _number_in_range(cls, value: Any, info: ValidationInfo) -> Any:
        """Every number setting, strictly (a Field in lax mode would take "0.5", true or 2.0 for an
        integer) and refused in the setting's own words; the range checked is the Field's."""
        field = SchedulerSettings.model_fields.get(info.field_name)
        kind, nullable = _held(field.annotation) if field else (None, False)
        if kind not in (int, float) or (value is None and nullable):
            return value
        bounds = {type(m).__name__: m for m in field.metadata}
        above = "Gt" in bounds  # the low bound excluded
        low, high = (bounds["Gt"].gt if above else bounds["Ge"].ge), bounds["Le"].le
        fits = _is_integer(value) if kind is int else _is_number(value)
        if not (fits and (low < value if above else low <= value) and value <= high):
            words = _RANGE_WORDS.get(info.field_name) or _default_words(kind, above, nullable)
            raise ValueError(f"{info.field_name} must be {words.format(low=low, high=high)}, got {shown(value)}")
        return value

    # A Field's strict=True refuses "true" too, but in pydantic's words, not the setting's.
    @field_validator("preemption_by_benefit", "prediction_guard", mode="before")
    @classmethod
    def _switch(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be true or false, got {shown(value)}")
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
