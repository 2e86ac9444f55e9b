"""kopf wiring: when an LLMServer is reconciled, and how its passes stay serial.

- ``@kopf.on.create``/``resume`` and ``@kopf.on.update(field="spec")`` run a pass for a
  new object, for every object at operator start, and on every spec edit. A
  ``scheduler.c`` edit is the fast path of the same pass: the planner finds only the
  ConfigMap changed, and the ready pods are retuned right after that one write. kopf
  retries a pass that could not apply the owned objects, with its TemporaryError's delay.
- A resync loop (one task, started with the operator) runs a pass of every LLMServer
  the handlers have seen every ``TRAIL_RESYNC_SECONDS``; while some ready pods have not
  taken the settings, or the owned objects could not be applied, it retries with
  exponential backoff instead. (The spec handlers only report such pods: a pending kopf
  retry would hold back the next edit until due.) It is not a ``@kopf.timer``: kopf puts
  a finalizer on every object with a timer, and then deleting an LLMServer hangs while
  the operator is down. With no finalizer, the API server deletes an LLMServer at once
  and its garbage collector the objects it owns (owner references), operator or not.
- ``@kopf.on.event`` on the owned Deployments and Pods (by label) runs a pass when what
  the status shows of them changes: replica counts, a pod's readiness or address, and a
  Deployment's generation (a hand edit, which the pass then undoes). The API server does
  the label filtering (``settings.watching.label_selectors``: kopf adds it to the watch's
  ``labelSelector``), so the operator never receives the cluster's other Pods; a handler's
  ``labels=`` is only kopf's client-side filter, kept for API servers that ignore the
  selector (kmock in tests).

With ``--peering`` (the chart's two replicas) kopf pauses the handlers of every replica
but the leader; the resync loop, not kopf's, asks the peering objects before each round
(trail_operator.peering), so a paused replica runs no pass at all.

kopf serialises the handlers of one object's events, but the resync loop and the handlers
of other resources (Pods, Deployments) run as tasks of their own. So every pass holds
its LLMServer's ``asyncio.Lock`` from its reads to its status write: passes, and the
status writes they end with, never interleave. Each pass reads the LLMServer afresh
under the lock, so whichever handler started it, it works from the current spec.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from typing import Any

import kopf

from trail_operator import crd, kube, peering, webhook
from trail_operator.layout import LABEL_SERVER
from trail_operator.owned import Peer
from trail_operator.pod import Images
from trail_operator.reconcile import Context, backoff, reconcile
from trail_operator.retune import RetuneClient, ready_targets

RESYNC_SECONDS = float(os.environ.get("TRAIL_RESYNC_SECONDS", "30"))
TICK_SECONDS = min(1.0, RESYNC_SECONDS / 2)  # how often the resync loop looks for passes due
# The finalizer older versions put on LLMServers: named so that kopf, needing none now, removes it.
FINALIZER = "trail.dev/operator"
LLMSERVERS = (crd.GROUP, crd.VERSION, crd.PLURAL)
OWNED_LABELS = {LABEL_SERVER: kopf.PRESENT}
OWNED_WATCHES = (("v1", "pods"), ("apps", "v1", "deployments"))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    crd.load_crd()  # fail at start, not at the first resource, if the CRD file is missing
    settings.peering.lifetime = peering.LIFETIME_SECONDS  # with --peering: a killed leader's standby takes over
    settings.persistence.finalizer = FINALIZER
    # kopf's own bookkeeping (retry state, the last handled spec) in annotations, not in the status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=crd.GROUP)
    settings.posting.level = logging.WARNING  # log lines as Events: warnings and errors (reconcile posts Normal ones)
    for resource in OWNED_WATCHES:
        settings.watching.label_selectors[resource] = LABEL_SERVER  # the label exists
    webhook.configure(settings)  # the admission webhook (trail_operator.webhook), when the chart enables it
    memo.ctx = Context(kube.connect(), RetuneClient(), Images.from_env(), Peer.from_env())
    memo.setdefault("peering", None)  # trail_operator.peering.Peering with --peering (cli), else standalone
    if memo.peering is not None:
        await memo.peering.ensure(memo.ctx.client)
    memo.locks = {}  # (namespace, name) -> asyncio.Lock; every object's memo shares this dict
    memo.due = {}  # (namespace, name) -> (loop time of its next resync, retries so far)
    memo.resyncs = set()  # the resync passes running
    memo.resync_loop = asyncio.create_task(_resync_loop(memo, logger))
    network = f"NetworkPolicies for {memo.ctx.peer}" if memo.ctx.peer else "no NetworkPolicies"
    logger.info(f"trail operator: CRD {crd.crd_path()}, images {memo.ctx.images}, {network}, resync {RESYNC_SECONDS}s")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.resync_loop.cancel()
    await asyncio.gather(memo.resync_loop, *memo.resyncs, return_exceptions=True)  # let running passes end
    for lock in list(memo.locks.values()):
        async with lock:
            pass
    await memo.ctx.client.close()
    await memo.ctx.retune.aclose()


async def _pass(memo: kopf.Memo, namespace: str, name: str, retry: int, logger: Any) -> list[str] | None:
    """A pass under the LLMServer's lock; the ready pods left without the settings (None:
    the LLMServer is gone, and forgotten here)."""
    key = (namespace, name)
    async with memo.locks.setdefault(key, asyncio.Lock()):
        try:
            pending = await reconcile(memo.ctx, namespace, name, retry, logger)
        except kube.KubeError as error:
            raise kopf.TemporaryError(f"reconcile failed, will retry: {error}", delay=backoff(retry)) from None
    if pending is None:
        memo.locks.pop(key, None)
        memo.due.pop(key, None)
    return pending


def _schedule(memo: kopf.Memo, key: tuple[str, str], delay: float, retry: int) -> None:
    memo.due[key] = (asyncio.get_running_loop().time() + delay, retry)


@kopf.on.resume(*LLMSERVERS)
@kopf.on.create(*LLMSERVERS)
@kopf.on.update(*LLMSERVERS, field="spec")
async def spec_changed(name: str, namespace: str, retry: int, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    _schedule(memo, (namespace, name), RESYNC_SECONDS, 0)  # resynced from now on, whatever this pass does
    await _pass(memo, namespace, name, retry, logger)


async def _resync(memo: kopf.Memo, key: tuple[str, str], retry: int, logger: Any) -> None:
    """One resync pass; the next one in RESYNC_SECONDS, or sooner (backoff) when it left
    work undone."""
    namespace, name = key
    try:
        pending = await _pass(memo, namespace, name, retry, logger)
    except kopf.PermanentError as error:  # an invalid spec: the status says so; looked at again later
        logger.warning(f"LLMServer {namespace}/{name}: {error}")
        pending = []
    except Exception as error:  # noqa: BLE001  (the loop must outlive any one pass)
        logger.warning(f"LLMServer {namespace}/{name}: {error}")
        _schedule(memo, key, backoff(retry), retry + 1)
        return
    if pending:
        logger.info(f"LLMServer {namespace}/{name}: pods not on the settings yet: {', '.join(pending)}")
        _schedule(memo, key, backoff(retry), retry + 1)
    elif pending is not None:
        _schedule(memo, key, RESYNC_SECONDS, 0)


async def _leads(memo: kopf.Memo, logger: Any) -> bool:
    """Whether this replica acts (always when standalone); unknown counts as no: a resync
    missed is made up later, two replicas acting at once is what peering prevents."""
    if memo.peering is None:
        return True
    try:
        return await memo.peering.leads(memo.ctx.client, datetime.datetime.now(datetime.UTC))
    except kube.KubeError as error:
        logger.warning(f"cannot read the peering objects, no resync now: {error}")
        return False


async def _resync_loop(memo: kopf.Memo, logger: Any) -> None:
    """Start the resync passes that are due, each as a task of its own (a slow pod must not
    hold back the other LLMServers), while this replica leads (kopf pauses only its handlers)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(TICK_SECONDS)
        due = [key for key, (when, _) in memo.due.items() if when <= loop.time()]
        if not due or not await _leads(memo, logger):
            continue
        for key, (when, retry) in list(memo.due.items()):
            if when <= loop.time():
                memo.due[key] = (float("inf"), retry)  # until this pass schedules the next
                task = asyncio.create_task(_resync(memo, key, retry, logger))
                memo.resyncs.add(task)
                task.add_done_callback(memo.resyncs.discard)


async def _owned_changed(memo: kopf.Memo, namespace: str, server: str, seen: Any, logger: Any) -> None:
    """A pass for the owning LLMServer when what its status shows of this object changed
    (``memo`` is this Pod's or Deployment's own); failures wait for the next event or resync."""
    if memo.get("seen") == seen:
        return
    memo.seen = seen
    try:
        await _pass(memo, namespace, server, 0, logger)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        logger.warning(f"LLMServer {namespace}/{server}: {error}")


@kopf.on.event(*OWNED_WATCHES[0], labels=OWNED_LABELS)
async def pod_changed(
    type: str, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    seen = [] if type == "DELETED" else ready_targets([dict(body)])
    await _owned_changed(memo, namespace, labels[LABEL_SERVER], seen, logger)


@kopf.on.event(*OWNED_WATCHES[1], labels=OWNED_LABELS)
async def deployment_changed(
    type: str, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    status = body.get("status") or {}
    counts = {key: status.get(key) for key in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas")}
    seen = None if type == "DELETED" else (body["metadata"].get("generation"), counts)
    await _owned_changed(memo, namespace, labels[LABEL_SERVER], seen, logger)
