"""What every wire model of the contract shares: camelCase names, no unknown fields, and
validation errors said in one line a user can act on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class Wire(BaseModel):
    """A model as the admin API, the settings file and the CRD spell it (camelCase)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def shown(value: Any) -> str:
    """A rejected value for a message, cut short (it may be a megabyte of someone's JSON)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def explain(error: ValidationError, prefix: str = "") -> str:
    """A validation error as one line a user can act on: ``field: reason; …``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{prefix}{where}: {message}" if where else f"{prefix.rstrip('.') or 'value'}: {message}")
    return "; ".join(problems)
