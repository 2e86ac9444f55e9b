"""kopf wiring: when an LLMServer is reconciled, and how its passes stay serial.

- ``@kopf.on.create``/``resume`` and ``@kopf.on.update(field="spec")`` run a pass for a
  new object, for every object at operator start, and on every spec edit. A
  ``scheduler.c`` edit is the fast path of the same pass: the planner finds only the
  ConfigMap changed, and the ready pods are retuned right after that one write. kopf
  retries a pass that could not apply the owned objects, with its TemporaryError's delay.
- ``@kopf.timer`` resyncs every ``TRAIL_RESYNC_SECONDS``; while some ready pods have not
  taken the settings, it retries with exponential backoff instead. (The spec handlers
  only report such pods: a pending kopf retry would hold back the next edit until due.)
- ``@kopf.on.event`` on the owned Deployments and Pods (by label) runs a pass when what
  the status shows of them changes: replica counts, a pod's readiness or address.

kopf serialises the handlers of one object's events, but its timers and the handlers
of other resources (Pods, Deployments) run as tasks of their own. So every pass holds
its LLMServer's ``asyncio.Lock`` from its reads to its status write: passes, and the
status writes they end with, never interleave. Each pass reads the LLMServer afresh
under the lock, so whichever handler started it, it works from the current spec.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from trail_operator import builders, crd, kube, webhook
from trail_operator.builders import Images
from trail_operator.reconcile import Context, backoff, reconcile
from trail_operator.retune import RetuneClient, ready_targets

RESYNC_SECONDS = float(os.environ.get("TRAIL_RESYNC_SECONDS", "30"))
FINALIZER = "trail.dev/operator"
LLMSERVERS = (crd.GROUP, crd.VERSION, crd.PLURAL)
OWNED_LABELS = {builders.LABEL_SERVER: kopf.PRESENT}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    crd.load_crd()  # fail at start, not at the first resource, if the CRD file is missing
    settings.peering.standalone = True  # one operator replica; no peering resources needed
    settings.persistence.finalizer = FINALIZER  # timers need one: kopf stops them before deletion
    # kopf's own bookkeeping (retry state, the last handled spec) in annotations, not in the status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=crd.GROUP)
    settings.posting.level = logging.WARNING  # Kubernetes Events for warnings and errors
    webhook.configure(settings)  # the admission webhook (trail_operator.webhook), when the chart enables it
    memo.ctx = Context(kube.connect(), RetuneClient(), Images.from_env())
    memo.locks = {}  # (namespace, name) -> asyncio.Lock; every object's memo shares this dict
    logger.info(f"trail operator: CRD {crd.crd_path()}, images {memo.ctx.images}, resync {RESYNC_SECONDS}s")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for lock in list(memo.locks.values()):  # let passes still running (a stopping timer's) end
        async with lock:
            pass
    await memo.ctx.client.close()
    await memo.ctx.retune.aclose()


async def _pass(memo: kopf.Memo, namespace: str, name: str, retry: int, logger: Any) -> list[str]:
    """A pass under the LLMServer's lock; the ready pods left without the settings."""
    async with memo.locks.setdefault((namespace, name), asyncio.Lock()):
        try:
            return await reconcile(memo.ctx, namespace, name, retry, logger)
        except kube.KubeError as error:
            raise kopf.TemporaryError(f"reconcile failed, will retry: {error}", delay=backoff(retry)) from None


@kopf.on.resume(*LLMSERVERS)
@kopf.on.create(*LLMSERVERS)
@kopf.on.update(*LLMSERVERS, field="spec")
async def spec_changed(name: str, namespace: str, retry: int, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    await _pass(memo, namespace, name, retry, logger)


@kopf.timer(*LLMSERVERS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(name: str, namespace: str, retry: int, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    pending = await _pass(memo, namespace, name, retry, logger)
    if pending:
        raise kopf.TemporaryError(f"pods not on the settings yet: {', '.join(pending)}", delay=backoff(retry))


@kopf.on.delete(*LLMSERVERS, optional=True)
async def deleted(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    memo.locks.pop((namespace, name), None)  # owner references take the owned objects away


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


@kopf.on.event("v1", "pods", labels=OWNED_LABELS)
async def pod_changed(
    type: str, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    seen = [] if type == "DELETED" else ready_targets([dict(body)])
    await _owned_changed(memo, namespace, labels[builders.LABEL_SERVER], seen, logger)


@kopf.on.event("apps", "v1", "deployments", labels=OWNED_LABELS)
async def deployment_changed(
    type: str, body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    status = body.get("status") or {}
    counts = {key: status.get(key) for key in ("observedGeneration", "replicas", "updatedReplicas", "readyReplicas")}
    seen = None if type == "DELETED" else (body["metadata"].get("generation"), counts)
    await _owned_changed(memo, namespace, labels[builders.LABEL_SERVER], seen, logger)
