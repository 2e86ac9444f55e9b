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
are only reported: the caller decides whether to retry (see handlers). Callers hold the
LLMServer's lock, so passes never interleave.
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

from trail_operator import builders, kube
from trail_operator.apply import OwnershipError, canonical, execute, plan
from trail_operator.builders import Images, Owner
from trail_operator.retune import RetuneClient, ready_targets
from trail_operator.spec import LLMServerSpec, SecretKeyRef, SpecError, parse_spec
from trail_operator.status import Observation, compute_status

MAX_BACKOFF_SECONDS = 30.0
OWNED = (("Secret", "secret"), ("ConfigMap", "configmap"), ("Service", "service"), ("Deployment", "deployment"))


class ProbeSourceError(Exception):
    """The probe named by spec.scheduler.probe cannot be read."""


@dataclass
class Context:
    """What every pass uses, made once at operator start."""

    client: AsyncClient
    retune: RetuneClient
    images: Images


@dataclass(frozen=True)
class Live:
    """The cluster state one pass starts from, read at once."""

    server: dict[str, Any] | None  # the LLMServer itself
    owned: list[dict[str, Any] | None]  # in OWNED's order
    pods: list[dict[str, Any]]


@dataclass(frozen=True)
class Desired:
    objects: list[dict[str, Any]]  # in OWNED's order
    token: str
    scheduler_generation: int
    settings: dict[str, Any]  # the admin API body the ready pods should run
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


def desire(
    owner: Owner,
    spec: LLMServerSpec,
    images: Images,
    generation: int | None,
    owned: list[dict[str, Any] | None],
    probe_data: bytes | None,
) -> Desired:
    """What the LLMServer should own and its pods run, given what it owns now: the admin
    token is kept, and so is the settings generation while the settings are unchanged."""
    live_secret, live_configmap = owned[0], owned[1]
    expected_sha = builders.probe_sha256(spec, probe_data)
    start_settings = builders.scheduler_update(spec, 0, probe_data, live=False)
    sched_gen = builders.scheduler_generation(
        builders.stored_settings(live_configmap), start_settings, generation, expected_sha
    )
    token = builders.secret_token(live_secret) or secrets.token_urlsafe(32)
    return Desired(
        objects=builders.build_all(owner, spec, images, token=token, generation=sched_gen, probe_data=probe_data),
        token=token,
        scheduler_generation=sched_gen,
        settings=builders.scheduler_update(spec, sched_gen, probe_data, live=True),
        probe_sha=expected_sha,
    )


async def read_live(client: AsyncClient, namespace: str, name: str) -> Live:
    """The LLMServer, what it owns and its pods, in one concurrent round-trip (all of it is
    found by the LLMServer's name)."""
    named = Owner(name, namespace, uid="")  # names and labels derive from the name alone
    server, *owned, pods = await asyncio.gather(
        kube.get(client, "LLMServer", namespace, name),
        *(kube.get(client, kind, namespace, builders.names(named)[key]) for kind, key in OWNED),
        kube.list_labelled(client, "Pod", namespace, builders.selector_labels(named)),
    )
    return Live(server=server, owned=owned, pods=pods)


async def read_probe(client: AsyncClient, namespace: str, spec: LLMServerSpec) -> bytes | None:
    ref = probe_ref(spec)
    if ref is None:
        return None
    return probe_bytes(await kube.get(client, "ConfigMap", namespace, ref.name), ref, namespace)


async def write_status(client: AsyncClient, server: dict[str, Any], obs: Observation) -> None:
    current = server.get("status") or {}
    status = compute_status(obs, current, datetime.datetime.now(datetime.UTC))
    if canonical({key: current.get(key) for key in status}) != canonical(status):
        meta = server["metadata"]
        await kube.patch(client, "LLMServer", meta["namespace"], meta["name"], {"status": status}, status=True)


async def reconcile(
    ctx: Context, namespace: str, name: str, retry: int, logger: logging.Logger | logging.LoggerAdapter
) -> list[str]:
    """One pass; the names of the ready pods not (yet) running the settings.

    The LLMServer is read afresh rather than taken from the event that started the pass:
    an event can be older than what an earlier pass already applied."""
    live = await read_live(ctx.client, namespace, name)
    if live.server is None or live.server["metadata"].get("deletionTimestamp"):
        return []  # deleted: the owner references take the rest away
    server, meta = live.server, live.server["metadata"]
    owner = Owner(name, namespace, meta["uid"])
    context = {
        "generation": meta.get("generation"),
        "endpoint": builders.endpoint(owner),
        "selector": builders.selector_string(owner),
        "deployment": live.owned[3],
    }
    try:
        spec = parse_spec(server.get("spec"))
    except SpecError as error:
        await write_status(ctx.client, server, Observation(spec_error=str(error), **context))
        raise kopf.PermanentError(f"invalid spec, nothing applied: {error}") from None
    context["desired_replicas"] = spec.replicas

    try:
        probe_data = await read_probe(ctx.client, namespace, spec)
        desired = desire(owner, spec, ctx.images, meta.get("generation"), live.owned, probe_data)
        writes = plan(owner.uid, desired.objects, live.owned)
        written = await execute(ctx.client, namespace, writes)
    except (kube.KubeError, OwnershipError, ProbeSourceError) as error:
        await write_status(ctx.client, server, Observation(apply_error=str(error), **context))
        raise kopf.TemporaryError(f"could not apply owned objects: {error}", delay=backoff(retry)) from None
    for write in writes:
        logger.info(f"{write.verb} {write.kind} {write.name}")

    reports = await ctx.retune.sync_all(ready_targets(live.pods), desired.token, desired.settings, desired.probe_sha)
    for report in reports:
        if report.error:
            logger.warning(f"pod {report.name}: {report.error}")
    context["deployment"] = written.get("Deployment", live.owned[3])
    obs = Observation(reports=reports, scheduler_generation=desired.scheduler_generation, **context)
    await write_status(ctx.client, server, obs)
    return [report.name for report in reports if not (report.synced or report.rejected)]
