"""Pure status computation: what the reconcile loop observed → ``LLMServer.status``.

Conditions follow the Kubernetes convention (type/status/reason/message,
lastTransitionTime kept while the status does not change).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from trail_contract.admin_api import GuardLevel
from trail_operator.retune import PodReport


@dataclass(frozen=True)
class Observation:
    generation: int | None
    desired_replicas: int | None = None
    spec_error: str | None = None  # the spec is invalid: nothing was applied
    apply_error: str | None = None  # applying owned objects failed part way (retried)
    deployment: dict[str, Any] | None = None
    reports: list[PodReport] = field(default_factory=list)
    scheduler_generation: int | None = None
    refused: dict[str, Any] | None = None  # status.refusedSettings: what the pods refused
    endpoint: str | None = None
    selector: str | None = None


def _condition(type_: str, ok: bool | None, reason: str, message: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return {"type": type_, "status": status, "reason": reason, "message": message}


def _ready(obs: Observation) -> dict[str, Any]:
    dstatus = (obs.deployment or {}).get("status") or {}
    ready, desired = int(dstatus.get("readyReplicas") or 0), obs.desired_replicas
    if obs.deployment is None:
        return _condition("Ready", False, "NoDeployment", "the Deployment does not exist yet")
    if desired == 0:
        return _condition("Ready", False, "ScaledToZero", "spec.replicas is 0")
    if desired is not None and ready >= desired:
        return _condition("Ready", True, "AllReplicasReady", f"{ready}/{desired} replicas ready")
    return _condition("Ready", False, "ReplicasNotReady", f"{ready}/{desired} replicas ready")


def _progressing(obs: Observation) -> dict[str, Any]:
    if obs.spec_error:
        return _condition("Progressing", False, "InvalidSpec", "not applied: the spec is invalid")
    if obs.apply_error:
        return _condition("Progressing", False, "ApplyFailed", obs.apply_error)
    deployment = obs.deployment or {}
    dstatus = deployment.get("status") or {}
    desired = obs.desired_replicas or 0
    stale = int(dstatus.get("observedGeneration") or 0) < int((deployment.get("metadata") or {}).get("generation") or 0)
    updated, ready = int(dstatus.get("updatedReplicas") or 0), int(dstatus.get("readyReplicas") or 0)
    if stale or updated < desired or ready < desired:
        return _condition(
            "Progressing", True, "RollingOut", f"{updated}/{desired} pods updated, {ready}/{desired} ready"
        )
    return _condition("Progressing", False, "RolloutComplete", f"{desired} pods up to date")


def _degraded(obs: Observation) -> dict[str, Any]:
    if obs.spec_error:
        return _condition("Degraded", True, "InvalidSpec", obs.spec_error)
    if obs.apply_error:
        return _condition("Degraded", True, "ApplyFailed", obs.apply_error)
    rejected = [r for r in obs.reports if r.rejected]
    if rejected:
        return _condition("Degraded", True, "SettingsRejected", "; ".join(f"pod {r.name}: {r.error}" for r in rejected))
    failed = [(r.name, r.view["probeFailure"]) for r in obs.reports if r.view and r.view.get("probeFailure")]
    if failed:  # the pods serve on, first come first served, until a new probe is applied
        return _condition("Degraded", True, "ProbeFailed", "; ".join(f"pod {name}: {why}" for name, why in failed))
    return _condition("Degraded", False, "AsExpected", "no errors")


def _synced(obs: Observation) -> dict[str, Any]:
    if obs.spec_error:
        return _condition("SchedulerSynced", False, "InvalidSpec", "the scheduler settings were not applied")
    if obs.scheduler_generation is None:
        return _condition("SchedulerSynced", None, "Unknown", "the scheduler ConfigMap is not written yet")
    gen = obs.scheduler_generation
    if not obs.reports:
        return _condition(
            "SchedulerSynced",
            True,
            "NoReadyPods",
            f"settings generation {gen} are in the ConfigMap; pods read them at start",
        )
    pending = [r for r in obs.reports if not r.synced]
    if not pending:
        return _condition(
            "SchedulerSynced",
            True,
            "AllPodsSynced",
            f"{len(obs.reports)}/{len(obs.reports)} ready pods run generation {gen}",
        )
    reason = "Rejected" if any(r.rejected for r in pending) else "PodsPending"
    detail = "; ".join(f"pod {r.name}: {r.error or 'not yet applied'}" for r in pending)
    return _condition(
        "SchedulerSynced",
        False,
        reason,
        f"{len(pending)}/{len(obs.reports)} ready pods not on generation {gen}: {detail}",
    )


def _measures(guard: dict[str, Any]) -> str:
    """A pod's prediction guard measures, for a condition's message."""
    first, prompt = guard.get("rankCorrelation"), guard.get("promptRankCorrelation")
    ranking = (
        "not measured"
        if first is None
        else f"{first:.2f} (first predictions), {'-' if prompt is None else f'{prompt:.2f}'} (prompt estimates)"
    )
    regret, preemptions = guard.get("regretRatio"), guard["resolvedPreemptions"]
    regretted = "no preemption resolved" if regret is None else f"regret ratio {regret:.2f} over {preemptions}"
    return f"rank correlation {ranking} over {guard['samples']} finished requests, {regretted}"


def _predictions(obs: Observation) -> dict[str, Any]:
    """Whether the pods' prediction guards trust the length predictions, and each pod's measures."""
    guards = [(r.name, r.guard) for r in obs.reports if r.guard is not None]
    if not guards:
        return _condition("PredictionsTrusted", None, "NotReported", "no ready pod reports its prediction guard")
    weak = [(name, guard) for name, guard in guards if guard["level"] != GuardLevel.TRUSTING.value]
    if weak:
        detail = "; ".join(f"pod {name}: {guard['level']} ({_measures(guard)})" for name, guard in weak)
        return _condition("PredictionsTrusted", False, "PredictionsWeak", f"predictions weak on this traffic: {detail}")
    detail = "; ".join(f"pod {name}: {_measures(guard)}" for name, guard in guards)
    enabled = [guard for _, guard in guards if guard["enabled"]]
    if not enabled:
        message = f"spec.scheduler.predictionGuard is off: the pods act on every prediction ({detail})"
        return _condition("PredictionsTrusted", None, "GuardOff", message)
    measured = [guard for guard in enabled if guard["samples"] >= guard["minSamples"]]
    if not measured:
        need = max(guard["minSamples"] for guard in enabled)
        message = f"too few finished requests to judge the predictions (the guard needs {need}): {detail}"
        return _condition("PredictionsTrusted", None, "TooFewSamples", message)
    return _condition(
        "PredictionsTrusted", True, "PredictionsTrusted", f"{len(measured)}/{len(guards)} pods measured: {detail}"
    )


def _degraded_pods(obs: Observation) -> str | None:
    """``status.degradedPods``: the pods not ordering requests as set, and why (kubectl's wide column)."""
    degraded = [f"{r.name} ({r.degradation})" for r in obs.reports if r.degradation]
    return ", ".join(degraded) or None


def compute_status(obs: Observation, previous: dict[str, Any] | None, now: datetime.datetime) -> dict[str, Any]:
    """The full status to write; lastTransitionTime carried over from ``previous``."""
    previous = previous or {}
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = []
    for cond in (_ready(obs), _progressing(obs), _degraded(obs), _synced(obs), _predictions(obs)):
        before = old.get(cond["type"]) or {}
        same = before.get("status") == cond["status"] and before.get("lastTransitionTime")
        cond["lastTransitionTime"] = before["lastTransitionTime"] if same else stamp
        if obs.generation is not None:
            cond["observedGeneration"] = obs.generation
        conditions.append(cond)
    dstatus = (obs.deployment or {}).get("status") or {}
    status: dict[str, Any] = {
        "conditions": conditions,
        "replicas": int(dstatus.get("replicas") or 0),
        "readyReplicas": int(dstatus.get("readyReplicas") or 0),
        "pods": [r.status_entry() for r in obs.reports],
        "refusedSettings": obs.refused,  # None removes it (a merge patch)
        "degradedPods": _degraded_pods(obs),
    }
    optional = {
        "observedGeneration": obs.generation,
        "schedulerGeneration": obs.scheduler_generation,
        "endpoint": obs.endpoint,
        "selector": obs.selector,
    }
    status.update({key: value for key, value in optional.items() if value is not None})
    return status
