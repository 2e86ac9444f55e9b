"""The policies a benchmark compares, and what each needs from its engine.

Each entry names its engine (stock vLLM or ``trail serve``), the admin-API settings
it runs under, whether it needs the probe (embedding refinement) or must run without
one (prompt predictor alone), and whether requests carry their oracle length.
One ``trail serve`` engine serves all TRAIL entries in sequence: probe-free entries
first, then the probe is loaded live (it cannot be unloaded) for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trail_scheduler.api import ConfigUpdate, RefinementPrior, SchedulerSettings
from trail_scheduler.errors import TrailError

STOCK, TRAIL = "stock", "trail"


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    description: str
    engine: str  # STOCK or TRAIL
    policy: str | None = None  # trail serve's policy
    c: float | None = None
    probe: bool = False  # True: needs the probe; False: runs with none loaded
    oracle: bool = False  # send trail_oracle_length
    refinement_prior: RefinementPrior = SchedulerSettings().refinement_prior

    def settings(self, max_wait_seconds: float | None) -> dict:
        """The admin-API body that puts a ``trail serve`` engine into this entry's policy
        (every entry sets the prior: the entries run one after another on one engine)."""
        changes: dict = {
            "policy": self.policy,
            "max_wait_seconds": max_wait_seconds,
            "refinement_prior": self.refinement_prior,
        }
        if self.c is not None:
            changes["c"] = self.c
        return ConfigUpdate.model_validate(changes).model_dump(mode="json", by_alias=True, exclude_unset=True)


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
    **{
        f"trail/prior={prior.value}": PolicyEntry(
            f"trail/prior={prior.value}",
            f"TRAIL (c=0.8) with embedding refinement, the belief starting from prior {prior.value!r}",
            TRAIL,
            "trail",
            0.8,
            probe=True,
            refinement_prior=prior,
        )
        for prior in RefinementPrior
    },
    "trail+": PolicyEntry(
        "trail+", "TRAIL+ (c=0.8) ranked by the true (profiled) lengths", TRAIL, "trail-oracle", 0.8, oracle=True
    ),
}
DEFAULT_POLICIES = ("fcfs", "sjf", "trail-prompt", "trail", "trail+")
DEFAULT_C_SWEEP = (0.0, 0.5, 2.0)  # beside the main entries' c = 0.8


class PolicyError(TrailError):
    pass


def sweep_entry(c: float, refined: bool) -> PolicyEntry:
    base = "trail" if refined else "trail-prompt"
    how = "with embedding refinement" if refined else "on the prompt predictor alone"
    return PolicyEntry(f"{base}@c={c:g}", f"TRAIL (c={c:g}) {how}", TRAIL, "trail", c, probe=refined)


def resolve(
    names: Sequence[str], c_sweep: Sequence[float], have_probe: bool, explicit: bool
) -> tuple[list[PolicyEntry], list[str]]:
    """The entries to run (stock first, then probe-free TRAIL ones, the oracle leading them,
    then probe ones) and notes. The oracle runs right after FCFS so the workload's headroom
    is known before any TRAIL number.

    Without a probe the refinement entries cannot run: asked for explicitly that is an
    error; in the default list they are dropped with a note. The c sweep runs with
    refinement when a probe is given, else on the prompt predictor alone.
    """
    unknown = [n for n in names if n not in BASE_ENTRIES]
    if unknown:
        raise PolicyError(
            f"unknown policy {', '.join(map(repr, unknown))}; expected some of: {', '.join(BASE_ENTRIES)}"
        )
    notes: list[str] = []
    entries = [BASE_ENTRIES[n] for n in dict.fromkeys(names)]
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
    entries.sort(key=lambda e: (order[(e.engine, e.probe)], not e.oracle))
    return entries, notes
