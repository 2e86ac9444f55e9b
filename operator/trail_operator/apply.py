"""Create-or-patch of owned objects, writing only when our desired state changed.

Like ``kubectl apply`` (client side): each object carries the desired state we last
applied in an annotation; an object is patched when the new desired state differs from
it, or when a field we set no longer holds our value (a hand edit: ``kubectl edit
deployment`` is undone on the next pass), and the patch is a JSON merge patch that also
nulls fields we dropped. So a reconcile that changes nothing writes nothing (a
scheduler-only edit leaves the Deployment untouched), and a restarted operator
re-derives the same state.

The annotation holds no secret material (``kubectl describe`` prints annotations): a
Secret's values are recorded as their sha256. Secrets are never patched either: one that
differs from what we want is deleted and created afresh (``CREATE_ONLY``), so the
operator needs no patch or update right on Secrets.

Why not server-side apply (``application/apply-patch+yaml`` with a fieldManager and
``force``): kmock's emulator, which the operator tests and the journey run against,
cannot serve it. It merges every PATCH body as a JSON merge patch whatever its
Content-Type, answers 404 to an apply of an object that does not exist instead of
creating it, and keeps no managedFields, so a field we stop setting would never be
removed and ``force`` would mean nothing.

``plan`` is the whole decision and is pure; ``execute`` only performs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.utils.quantity import parse_quantity

from trail_operator import kube

LAST_APPLIED = "trail.dev/last-applied"
_BIG = 1024  # values longer than this (probe bytes) are stored as their hash
CREATE_ONLY = frozenset({"Secret"})  # replaced (delete, create) instead of patched
_QUANTITIES = frozenset({"requests", "limits"})  # maps of quantities the API server rewrites ("1000m" -> "1")


class OwnershipError(Exception):
    """An object with our name exists but belongs to something else."""


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def squash(value: Any) -> Any:
    """Large strings replaced by their hash."""
    if isinstance(value, dict):
        return {key: squash(item) for key, item in value.items()}
    if isinstance(value, list):
        return [squash(item) for item in value]
    if isinstance(value, str) and len(value) > _BIG:
        return _digest(value)
    return value


def record(desired: dict[str, Any]) -> dict[str, Any]:
    """The desired state as recorded in the annotation: large strings, and every value of a
    Secret, replaced by their sha256."""
    recorded = squash(desired)
    if desired.get("kind") == "Secret":
        for key in ("data", "stringData"):
            if key in desired:
                recorded[key] = {name: _digest(value) for name, value in desired[key].items()}
    return recorded


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def merge_patch(last: Any, desired: Any) -> Any:
    """A JSON merge patch (RFC 7386) turning what we applied last into ``desired``."""
    if not isinstance(last, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {key: None for key in last.keys() - desired.keys()}
    for key, value in desired.items():
        patch[key] = merge_patch(last.get(key), value) if isinstance(value, dict) else value
    return patch


def last_applied(live: dict[str, Any]) -> dict[str, Any] | None:
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def with_record(desired: dict[str, Any]) -> dict[str, Any]:
    """``desired`` plus the annotation recording it."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), LAST_APPLIED: canonical(record(desired))}
    return {**desired, "metadata": meta}


def check_owned(live: dict[str, Any] | None, owner_uid: str) -> None:
    if live is None:
        return
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    if not any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs):
        meta = live.get("metadata") or {}
        raise OwnershipError(
            f"{live.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')} already exists "
            "and is not controlled by this LLMServer; rename or delete it"
        )


def holds(live: Any, desired: Any, quantities: bool = False) -> bool:
    """Whether ``live`` still has every value of ``desired``: keys the API server added
    (defaults, status) do not matter; lists must match item by item."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and holds(live[key], value, quantities or key in _QUANTITIES) for key, value in desired.items()
        )
    if isinstance(desired, list):
        same_length = isinstance(live, list) and len(live) == len(desired)
        return same_length and all(holds(item, want, quantities) for item, want in zip(live, desired, strict=False))
    if quantities and isinstance(live, str | int) and isinstance(desired, str | int):
        try:
            return parse_quantity(live) == parse_quantity(desired)
        except ValueError:
            return False
    return bool(live == desired)


def needs_write(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    """Whether ``desired`` is not what we applied last, or not what the object holds now."""
    if live is None:
        return True
    previous = last_applied(live)
    if previous is None or canonical(previous) != canonical(record(desired)):
        return True
    return not holds(_content(live), _content(desired))


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """All but the metadata, which the API server and other tools annotate and count."""
    return {key: value for key, value in obj.items() if key != "metadata"}


@dataclass(frozen=True)
class Write:
    """One API write: ``body`` is the object to create, or the merge patch to send."""

    verb: str  # "create", "patch" or "delete"
    kind: str
    name: str
    body: dict[str, Any]


def plan(owner_uid: str, desired: list[dict[str, Any]], live: list[dict[str, Any] | None]) -> list[Write]:
    """The writes turning ``live`` into ``desired`` (pairwise, in order). Ownership of every
    live object is checked first, so an OwnershipError means nothing is to be written."""
    for current in live:
        check_owned(current, owner_uid)
    writes = []
    for obj, current in zip(desired, live, strict=True):
        if not needs_write(current, obj):
            continue
        recorded = with_record(obj)
        name = obj["metadata"]["name"]
        if current is not None and obj["kind"] in CREATE_ONLY:
            writes.append(Write("delete", obj["kind"], name, {}))
            current = None
        if current is None:
            writes.append(Write("create", obj["kind"], name, recorded))
        else:
            writes.append(Write("patch", obj["kind"], name, merge_patch(last_applied(current) or {}, recorded)))
    return writes


def removals(owner_uid: str, unwanted: list[dict[str, Any] | None]) -> list[Write]:
    """Deletes of the objects in ``unwanted`` (owned kinds the spec no longer asks for: an
    InferencePool turned off) that this LLMServer controls; anyone else's are left alone."""
    writes = []
    for live in unwanted:
        refs = ((live or {}).get("metadata") or {}).get("ownerReferences") or []
        if any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs):
            assert live is not None
            writes.append(Write("delete", live["kind"], live["metadata"]["name"], {}))
    return writes


async def execute(client: AsyncClient, namespace: str, writes: list[Write]) -> dict[str, dict[str, Any]]:
    """Perform the writes in order (what pods mount exists before the Deployment that
    mounts it); the objects as written, by kind."""
    written = {}
    for write in writes:
        if write.verb == "delete":
            await kube.delete(client, write.kind, namespace, write.name)
        elif write.verb == "create":
            written[write.kind] = await kube.create(client, write.body)
        else:
            written[write.kind] = await kube.patch(client, write.kind, namespace, write.name, write.body)
    return written
