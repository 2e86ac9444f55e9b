"""kopf wiring: one reconcile loop (a kopf daemon) per LLMServer.

A single coroutine per LLMServer does all its writes (owned objects, pod retunes,
status), so status never races with itself. It runs when the LLMServer's spec, its
Deployment or its pods change (event handlers below wake it), after failures with
exponential backoff, and every ``TRAIL_RESYNC_SECONDS`` otherwise. Each pass fetches
the current state, calls the pure builders, applies what differs and reports status;
a restarted operator simply runs the same pass again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
import os
import secrets
from typing import Any

import kopf

from trail_operator import builders, crd
from trail_operator.apply import OwnershipError, apply_all, canonical
from trail_operator.builders import Images, Owner
from trail_operator.kube import Kube, KubeError
from trail_operator.retune import RetuneClient, ready_targets
from trail_operator.spec import LLMServerSpec, SpecError, parse_spec
from trail_operator.status import Observation, compute_status

RESYNC_SECONDS = float(os.environ.get("TRAIL_RESYNC_SECONDS", "30"))
MAX_BACKOFF_SECONDS = 30.0
FINALIZER = "trail.dev/operator"


class ProbeSourceError(Exception):
    """The probe named by spec.scheduler.probe cannot be read."""


async def read_probe(kube: Kube, namespace: str, spec: LLMServerSpec) -> bytes | None:
    """The bytes of a ConfigMap probe source (other sources are fetched by the pods)."""
    probe = spec.scheduler.probe
    if probe is None or probe.config_map_key_ref is None:
        return None
    ref = probe.config_map_key_ref
    configmap = await kube.get("ConfigMap", namespace, ref.name)
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


async def write_status(kube: Kube, obj: dict[str, Any], obs: Observation) -> None:
    current = obj.get("status") or {}
    status = compute_status(obs, current, datetime.datetime.now(datetime.UTC))
    if canonical({key: current.get(key) for key in status}) != canonical(status):
        meta = obj["metadata"]
        await kube.patch("LLMServer", meta["namespace"], meta["name"], {"status": status}, subresource="status")


async def reconcile(
    kube: Kube,
    retune: RetuneClient,
    images: Images,
    namespace: str,
    name: str,
    logger: logging.Logger | logging.LoggerAdapter,
) -> bool:
    """One pass; True when settled (nothing to retry before the next change or resync)."""
    obj = await kube.get("LLMServer", namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return True  # deleted: the owner references take the rest away
    meta = obj["metadata"]
    owner = Owner(name, namespace, meta["uid"])
    generation = meta.get("generation")
    n = builders.names(owner)
    context = {
        "generation": generation,
        "endpoint": builders.endpoint(owner),
        "selector": builders.selector_string(owner),
    }

    try:
        spec = parse_spec(obj.get("spec"))
    except SpecError as error:
        logger.error(f"invalid spec, nothing applied: {error}")
        deployment = await kube.get("Deployment", namespace, n["deployment"])
        await write_status(kube, obj, Observation(spec_error=str(error), deployment=deployment, **context))
        return True
    context["desired_replicas"] = spec.replicas

    # The owned objects, in build_all's order, read concurrently (one round-trip, not four).
    live = list(
        await asyncio.gather(
            *(
                kube.get(kind, namespace, n[key])
                for kind, key in (
                    ("Secret", "secret"),
                    ("ConfigMap", "configmap"),
                    ("Service", "service"),
                    ("Deployment", "deployment"),
                )
            )
        )
    )
    live_secret, live_configmap = live[0], live[1]
    try:
        probe_data = await read_probe(kube, namespace, spec)
        expected_sha = builders.probe_sha256(spec, probe_data)
        start_settings = builders.scheduler_update(spec, 0, probe_data, live=False)
        sched_gen = builders.scheduler_generation(
            builders.stored_settings(live_configmap), start_settings, generation, expected_sha
        )
        token = builders.secret_token(live_secret) or secrets.token_urlsafe(32)
        desired = builders.build_all(owner, spec, images, token=token, generation=sched_gen, probe_data=probe_data)
        for line in await apply_all(kube, namespace, owner.uid, desired, live):
            logger.info(line)
    except (KubeError, OwnershipError, ProbeSourceError) as error:
        logger.error(f"could not apply owned objects: {error}")
        await write_status(kube, obj, Observation(apply_error=str(error), deployment=live[3], **context))
        return False

    deployment = await kube.get("Deployment", namespace, n["deployment"])
    targets = ready_targets(await kube.list("Pod", namespace, builders.selector_labels(owner)))
    live_settings = builders.scheduler_update(spec, sched_gen, probe_data, live=True)
    reports = await retune.sync_all(targets, token, live_settings, expected_sha)
    for report in reports:
        if report.error:
            logger.warning(f"pod {report.name}: {report.error}")
    await write_status(
        kube, obj, Observation(deployment=deployment, reports=reports, scheduler_generation=sched_gen, **context)
    )
    return all(report.synced or report.rejected for report in reports)


def _wake(memo: kopf.Memo, namespace: str | None, name: str | None) -> None:
    event = memo.wakers.get((namespace, name))
    if event is not None:
        event.set()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    crd.load_crd()  # fail at start, not at the first resource, if the CRD file is missing
    settings.peering.standalone = True  # one operator replica; no peering resources needed
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING  # Kubernetes Events for warnings and errors
    memo.kube = Kube.from_environment()
    memo.retune = RetuneClient()
    memo.images = Images.from_env()
    memo.wakers = {}
    logger.info(f"trail operator: CRD {crd.crd_path()}, images {memo.images}, resync {RESYNC_SECONDS}s")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.aclose()
    await memo.retune.aclose()


@kopf.daemon(crd.GROUP, crd.VERSION, crd.PLURAL, cancellation_timeout=5.0)
async def serve(
    name: str, namespace: str, memo: kopf.Memo, logger: logging.Logger, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    key = (namespace, name)
    wake = memo.wakers.setdefault(key, asyncio.Event())
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                settled = await reconcile(memo.kube, memo.retune, memo.images, namespace, name, logger)
            except KubeError as error:
                logger.error(f"reconcile failed, will retry: {error}")
                settled = False
            failures = 0 if settled else failures + 1
            delay = RESYNC_SECONDS if settled else min(MAX_BACKOFF_SECONDS, 0.5 * 2**failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
    finally:
        memo.wakers.pop(key, None)


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
async def llmserver_changed(name: str, namespace: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    """Wake the loop on spec changes only: its own status writes must not wake it."""
    fingerprint = canonical(dict(spec))
    if memo.get("last_spec") != fingerprint:
        memo.last_spec = fingerprint
        memo.wakers.setdefault((namespace, name), asyncio.Event()).set()


@kopf.on.event("v1", "pods", labels={builders.LABEL_SERVER: kopf.PRESENT})
@kopf.on.event("apps", "v1", "deployments", labels={builders.LABEL_SERVER: kopf.PRESENT})
async def owned_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    _wake(memo, namespace, labels.get(builders.LABEL_SERVER))
