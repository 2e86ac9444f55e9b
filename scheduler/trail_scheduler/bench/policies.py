"""The policies a benchmark compares, and what each needs from its engine.

Each entry names its engine (stock vLLM or ``trail serve``), the admin-API settings
it runs under, whether it needs the probe (embedding refinement) or must run without
one (prompt predictor alone), and which length hint requests carry (the true length for
the oracle, the prompt's length for shortest-prompt-first).
Probe-free TRAIL entries and those with the probe run on two ``trail serve`` engines (a
loaded probe cannot be unloaded), and runs on all the engines alternate (see
``BenchConfig.schedule``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from trail_contract.errors import TrailError
from trail_contract.settings import SETTING_KEYS, SchedulerSettings
from trail_contract.wire import explain

STOCK, TRAIL = "stock", "trail"


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    description: str
    engine: str  # STOCK or TRAIL
    policy: str | None = None  # trail serve's policy
    c: float | None = None
    probe: bool = False  # True: needs the probe; False: runs with none loaded
    # The length hint each request carries (``trail_oracle_length``): "output", its true length
    # (TRAIL+), or "prompt", its prompt's length (shortest prompt first); None: no hint.
    hint: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()  # settings named in the entry (wire names)
    sweep: bool = False  # an extra of --c-sweep: heaviest load and first seed only

    def settings(self, max_wait_seconds: float | None) -> dict:
        """The admin-API body that puts a ``trail serve`` engine into this entry's policy: every
        setting, the shipped default where the entry names none, because the entries run one
        after another on one engine and must not inherit each other's."""
        values: dict[str, Any] = {"policy": self.policy, "max_wait_seconds": max_wait_seconds}
        if self.c is not None:
            values["c"] = self.c
        return SchedulerSettings.model_validate(values | dict(self.overrides)).wire()


BASE_ENTRIES = {
    "fcfs": PolicyEntry("fcfs", "stock vLLM (its own scheduler), first come first served", STOCK),
    "trail-fcfs": PolicyEntry(
        "trail-fcfs", "trail serve with policy fcfs (TRAIL's scheduler class, FCFS order)", TRAIL, "fcfs"
    ),
    "sjf": PolicyEntry("sjf", "shortest job first on the prompt predictor, no preemption", TRAIL, "sjf"),
    "trail-prompt": PolicyEntry(
        "trail-prompt", "TRAIL (c=0.8) on the prompt predictor alone, no probe", TRAIL, "trail", 0.8
    ),
    "trail": PolicyEntry("trail", "TRAIL (c=0.8) with embedding refinement (probe)", TRAIL, "trail", 0.8, probe=True),
    "trail+": PolicyEntry(
        "trail+", "TRAIL+ (c=0.8) ranked by the true (profiled) lengths", TRAIL, "trail-oracle", 0.8, hint="output"
    ),
    # What SGLang and TensorRT-LLM users reach for: order by the prompt's length, which every
    # server knows for free (TRAIL+'s order fed the prompt's length; c = 0, so no preemption).
    "spf": PolicyEntry("spf", "shortest prompt first, no preemption", TRAIL, "trail-oracle", 0.0, hint="prompt"),
}
DEFAULT_POLICIES = ("fcfs", "sjf", "spf", "trail-prompt", "trail", "trail+")
DEFAULT_C_SWEEP = (0.0, 0.5, 2.0)  # beside the main entries' c = 0.8


class PolicyError(TrailError):
    pass


def sweep_entry(c: float, refined: bool) -> PolicyEntry:
    base = "trail" if refined else "trail-prompt"
    how = "with embedding refinement" if refined else "on the prompt predictor alone"
    return PolicyEntry(f"{base}@c={c:g}", f"TRAIL (c={c:g}) {how}", TRAIL, "trail", c, probe=refined, sweep=True)


# What an entry may set: the bench sets the policy (the entry's) and the starvation bound (its flag).
ENTRY_SETTINGS = tuple(key for key in SETTING_KEYS if key not in ("policy", "maxWaitSeconds"))


def with_overrides(name: str) -> PolicyEntry:
    """``trail/preemptionMargin=128/refinementPrior=prompt``: a TRAIL-engine entry with settings
    changed (wire names, JSON values or bare words), so any switch runs side by side with the
    entry it changes."""
    base, *items = name.split("/")
    entry = BASE_ENTRIES.get(base)
    if entry is None or entry.engine != TRAIL or not items:
        raise PolicyError(
            f"unknown policy {name!r}; expected some of: {', '.join(BASE_ENTRIES)}, "
            "or a trail-engine entry with settings, e.g. trail/preemptionMargin=128"
        )
    overrides = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or key not in ENTRY_SETTINGS:
            raise PolicyError(f"{name!r}: {item!r} is not setting=value; settings: {', '.join(ENTRY_SETTINGS)}")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    try:
        SchedulerSettings.model_validate({"policy": entry.policy, **overrides})
    except ValidationError as error:
        raise PolicyError(f"{name!r}: {explain(error)}") from None
    description = f"{entry.description}, with {', '.join(items)}"
    return replace(entry, name=name, description=description, overrides=tuple(overrides.items()))


def resolve(
    names: Sequence[str], c_sweep: Sequence[float], have_probe: bool, explicit: bool
) -> tuple[list[PolicyEntry], list[str]]:
    """The entries to run, in their turns' order (stock first, then probe-free TRAIL ones, the
    oracle leading them, then probe ones), and notes. In the first round the oracle runs right
    after FCFS, so the workload's headroom is known before any TRAIL number.

    Without a probe the refinement entries cannot run: asked for explicitly that is an
    error; in the default list they are dropped with a note. The c sweep runs with
    refinement when a probe is given, else on the prompt predictor alone.
    """
    notes: list[str] = []
    entries = [BASE_ENTRIES[n] if n in BASE_ENTRIES else with_overrides(n) for n in dict.fromkeys(names)]
    if not have_probe and any(e.probe for e in entries):
        if explicit:
            raise PolicyError("policy 'trail' (embedding refinement) needs a probe: pass --probe FILE")
        entries = [e for e in entries if not e.probe]
        notes.append("'trail' (embedding refinement) not run: no --probe given")
    for c in c_sweep:
        if not 0 <= c <= 1000:
            raise PolicyError(f"c in the sweep must be between 0 and 1000, got {c}")
        entry = sweep_entry(c, have_probe)
        same = [e for e in entries if e.policy == "trail" and e.c == c and e.probe == entry.probe]
        if not same:
            entries.append(entry)
    if not entries:
        raise PolicyError("no policies to run")
    order = {(STOCK, False): 0, (TRAIL, False): 1, (TRAIL, True): 2}
    # Stable: keeps the given order within a group.
    entries.sort(key=lambda e: (order[(e.engine, e.probe)], e.hint != "output"))
    return entries, notes
