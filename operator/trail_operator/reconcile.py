"""One reconcile pass of an LLMServer: read, decide (pure), write, retune, report.

A pass reads what it needs at once (the LLMServer, its owned objects and pods: one
concurrent round-trip; a probe ConfigMap after it), decides with pure functions
(``desire``, ``apply.plan``), writes only what differs, pushes the scheduler settings
to the ready pods and writes the status when it changed. A ``scheduler.c`` edit is so
four sequential round-trips from the event to the pods: the reads, the ConfigMap
patch, and the admin API's GET and PUT on every ready pod at once. A pass that cannot do its writes ends with
kopf's errors, after the status says why: ``kopf.PermanentError`` for an invalid spec
(nothing to retry until the spec changes), ``kopf.TemporaryError`` with exponential
backoff when an API call or a probe source fails. Pods that did not take the settings
are only reported: the caller decides whether to retry (see handlers). Settings the pods
refused are remembered in ``status.refusedSettings`` (by settings generation and probe
sha256) and not sent again until the spec changes them: a refused probe URL is not
downloaded by every pod at every resync. Callers hold the LLMServer's lock, so passes
never interleave.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import kopf
from lightkube import AsyncClient

from trail_contract.admin_api import ConfigUpdate
from trail_operator import kube
from trail_operator.apply import OwnershipError, canonical, execute, needs_write, plan, removals
from trail_operator.events import build_event, lifecycle_events
from trail_operator.layout import Owner, endpoint, names, selector_labels, selector_string
from trail_operator.owned import Peer, build_all, build_secret, secret_token
from trail_operator.pod import Images
from trail_operator.retune import PodReport, RetuneClient, ready_targets
from trail_operator.scheduler_settings import (
    desired_settings,
    live_settings,
    probe_sha_of,
    scheduler_generation,
    stored_settings,
)
from trail_operator.spec import LLMServerSpec, SecretKeyRef, SpecError, parse_spec
from trail_operator.status import Observation, compute_status

MAX_BACKOFF_SECONDS = 30.0
OWNED = (
    ("Secret", "secret"),
    ("ConfigMap", "configmap"),
    ("Service", "service"),
    ("PodDisruptionBudget", "poddisruptionbudget"),
    ("InferencePool", "inferencepool"),
    ("PersistentVolumeClaim", "cache"),
    ("NetworkPolicy", "networkpolicy"),
    ("Deployment", "deployment"),
)


class ProbeSourceError(Exception):
    """The probe named by spec.scheduler.probe cannot be read."""


@dataclass
class Context:
    """What every pass uses, made once at operator start."""

    client: AsyncClient
    retune: RetuneClient
    images: Images
    peer: Peer | None = None  # NetworkPolicies on: who may reach the admin port

    def owned_kinds(self) -> list[tuple[str, str]]:
        """What each LLMServer owns (NetworkPolicies only when they are on: the operator
        then neither reads nor writes them)."""
        return [(kind, key) for kind, key in OWNED if kind != "NetworkPolicy" or self.peer is not None]


@dataclass(frozen=True)
class Live:
    """The cluster state one pass starts from, read at once."""

    server: dict[str, Any] | None  # the LLMServer itself
    owned: dict[str, dict[str, Any] | None]  # by kind
    pods: list[dict[str, Any]]


@dataclass(frozen=True)
class Desired:
    objects: list[dict[str, Any]]  # in the order to apply them
    token: str
    scheduler_generation: int
    settings: ConfigUpdate  # what the ready pods should run (the PUT, probe inline)
    probe_sha: str | None


def backoff(retry: int) -> float:
    return min(MAX_BACKOFF_SECONDS, 0.5 * 2**retry)


def probe_bytes(configmap: dict[str, Any] | None, ref: SecretKeyRef, namespace: str) -> bytes:
    """The probe's bytes from its ConfigMap (``binaryData`` first, then ``data``)."""
    if configmap is None:
        raise ProbeSourceError(f"probe ConfigMap {namespace}/{ref.name} does not exist")
    binary, text = configmap.get("binaryData") or {}, configmap.get("data") or {}
    try:
        if ref.key in binary:
            return base64.b64decode(binary[ref.key], validate=True)
    except binascii.Error as error:
        raise ProbeSourceError(f"probe ConfigMap {ref.name} key {ref.key}: bad base64 ({error})") from None
    if ref.key in text:
        return text[ref.key].encode()
    raise ProbeSourceError(f"probe ConfigMap {namespace}/{ref.name} has no key {ref.key!r}")


def probe_ref(spec: LLMServerSpec) -> SecretKeyRef | None:
    """The ConfigMap probe source, the only one the operator reads (pods fetch the others)."""
    return spec.scheduler.probe.config_map_key_ref if spec.scheduler.probe is not None else None


def kept_token(owner: Owner, secret: dict[str, Any] | None) -> str | None:
    """The live Secret's token while the Secret is exactly what we wrote: a deleted,
    hand-edited or emptied Secret, or one whose token an older operator recorded in clear
    in an annotation, gets a new token (and the Secret is created afresh)."""
    token = secret_token(secret)
    if token is None or needs_write(secret, build_secret(owner, token)):
        return None
    return token


def desire(
    owner: Owner,
    spec: LLMServerSpec,
    images: Images,
    generation: int | None,
    owned: dict[str, dict[str, Any] | None],
    probe_data: bytes | None,
    peer: Peer | None = None,
) -> Desired:
    """What the LLMServer should own and its pods run, given what it owns now: the admin
    token is kept, and so is the settings generation while the settings are unchanged."""
    start = desired_settings(spec, probe_data)
    sched_gen = scheduler_generation(stored_settings(owned.get("ConfigMap")), start, generation)
    settings = start.model_copy(update={"generation": sched_gen})
    token = kept_token(owner, owned.get("Secret")) or secrets.token_urlsafe(32)
    return Desired(
        objects=build_all(owner, spec, images, token=token, settings=settings, probe_data=probe_data, peer=peer),
        token=token,
        scheduler_generation=sched_gen,
        settings=live_settings(spec, settings, probe_data),
        probe_sha=probe_sha_of(settings),
    )


async def read_live(ctx: Context, namespace: str, name: str) -> Live:
    """The LLMServer, what it owns and its pods, in one concurrent round-trip (all of it is
    found by the LLMServer's name)."""
    named = Owner(name, namespace, uid="")  # names and labels derive from the name alone
    kinds = ctx.owned_kinds()
    server, *owned, pods = await asyncio.gather(
        kube.get(ctx.client, "LLMServer", namespace, name),
        *(kube.get(ctx.client, kind, namespace, names(named)[key]) for kind, key in kinds),
        kube.list_labelled(ctx.client, "Pod", namespace, selector_labels(named)),
    )
    return Live(server=server, owned={kind: obj for (kind, _), obj in zip(kinds, owned, strict=True)}, pods=pods)


async def read_probe(client: AsyncClient, namespace: str, spec: LLMServerSpec) -> bytes | None:
    ref = probe_ref(spec)
    if ref is None:
        return None
    return probe_bytes(await kube.get(client, "ConfigMap", namespace, ref.name), ref, namespace)


async def write_status(client: AsyncClient, server: dict[str, Any], obs: Observation) -> dict[str, Any]:
    """Write the status ``obs`` implies when it changed; the status, written or not."""
    current = server.get("status") or {}
    status = compute_status(obs, current, datetime.datetime.now(datetime.UTC))
    if canonical({key: current.get(key) for key in status}) != canonical(status):
        meta = server["metadata"]
        await kube.patch(client, "LLMServer", meta["namespace"], meta["name"], {"status": status}, status=True)
    return status


def held_back(server: dict[str, Any], desired: Desired) -> str | None:
    """The pods' reason, when they already refused exactly these settings."""
    refused = (server.get("status") or {}).get("refusedSettings") or {}
    same = refused.get("generation") == desired.scheduler_generation
    return refused.get("message") if same and refused.get("probeSha256") == desired.probe_sha else None


def refusal(desired: Desired, reports: list[PodReport], previous: str | None) -> dict[str, Any] | None:
    """What ``status.refusedSettings`` should say after this pass: the first pod's refusal;
    an earlier one while no pod could be asked; else nothing."""
    message = next((r.error for r in reports if r.rejected), None if reports else previous)
    if message is None:
        return None
    entry: dict[str, Any] = {"generation": desired.scheduler_generation, "message": message}
    if desired.probe_sha is not None:
        entry["probeSha256"] = desired.probe_sha
    return entry


async def reconcile(
    ctx: Context, namespace: str, name: str, retry: int, logger: logging.Logger | logging.LoggerAdapter
) -> list[str] | None:
    """One pass; the names of the ready pods not (yet) running the settings (None: the
    LLMServer is gone).

    The LLMServer is read afresh rather than taken from the event that started the pass:
    an event can be older than what an earlier pass already applied."""
    live = await read_live(ctx, namespace, name)
    if live.server is None or live.server["metadata"].get("deletionTimestamp"):
        return None  # deleted: the owner references take the rest away
    server, meta = live.server, live.server["metadata"]
    owner = Owner(name, namespace, meta["uid"])
    context = {
        "generation": meta.get("generation"),
        "endpoint": endpoint(owner),
        "selector": selector_string(owner),
        "deployment": live.owned["Deployment"],
        "refused": (server.get("status") or {}).get("refusedSettings"),  # kept when this pass stops early
    }
    try:
        spec = parse_spec(server.get("spec"))
    except SpecError as error:
        await write_status(ctx.client, server, Observation(spec_error=str(error), **context))
        raise kopf.PermanentError(f"invalid spec, nothing applied: {error}") from None
    context["desired_replicas"] = spec.replicas

    try:
        probe_data = await read_probe(ctx.client, namespace, spec)
        desired = desire(owner, spec, ctx.images, meta.get("generation"), live.owned, probe_data, ctx.peer)
        writes = plan(owner.uid, desired.objects, [live.owned[obj["kind"]] for obj in desired.objects])
        wanted = {obj["kind"] for obj in desired.objects}
        writes += removals(owner.uid, [obj for kind, obj in live.owned.items() if kind not in wanted])
        written = await execute(ctx.client, namespace, writes)
    except (kube.KubeError, OwnershipError, ProbeSourceError) as error:
        await write_status(ctx.client, server, Observation(apply_error=str(error), **context))
        raise kopf.TemporaryError(f"could not apply owned objects: {error}", delay=backoff(retry)) from None
    for write in writes:
        logger.info(f"{write.verb} {write.kind} {write.name}")

    refused = held_back(server, desired)
    reports = await ctx.retune.sync_all(
        ready_targets(live.pods), desired.token, desired.settings, desired.probe_sha, refused=refused
    )
    for report in reports:
        if report.error:
            logger.warning(f"pod {report.name}: {report.error}")
    context["deployment"] = written.get("Deployment", live.owned["Deployment"])
    context["refused"] = refusal(desired, reports, refused)
    obs = Observation(reports=reports, scheduler_generation=desired.scheduler_generation, **context)
    status = await write_status(ctx.client, server, obs)
    old_status, deployment = server.get("status"), live.owned["Deployment"]
    generation = desired.scheduler_generation
    for reason, message in lifecycle_events(writes, deployment, spec.replicas, generation, reports, old_status, status):
        event = build_event(server, reason, message, datetime.datetime.now(datetime.UTC))
        try:
            await kube.create(ctx.client, event)
        except kube.KubeError as error:  # an event is worth less than finishing the pass
            logger.warning(f"could not post event {reason}: {error}")
    return [report.name for report in reports if not (report.synced or report.rejected)]
