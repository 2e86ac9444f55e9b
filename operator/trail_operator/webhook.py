"""The validating admission webhook: a bad LLMServer is refused at ``kubectl apply``, with the reason.

The CRD's schema and CEL rules catch what they can; this catches the rest before the
object is stored: the operator's own spec check (:func:`trail_operator.spec.parse_spec`,
which runs :func:`trail_operator.engine_flags.check_extra_args` on ``extraArgs``), and a
probe that cannot read the model (its hidden size and layer, from the probe file's header,
for a probe in a ConfigMap and a model whose shape is known here: the bundled one). A
denial carries the reason in the AdmissionReview's ``status.message``.

The operator still re-checks every spec in its passes: the webhook may be off (it is an
option of the chart) or unreachable, and a probe ConfigMap may change after admission.

kopf serves the webhook (:class:`kopf.WebhookServer`) when ``TRAIL_WEBHOOK_CERT_DIR``
names a folder with ``tls.crt`` and ``tls.key`` (the chart mounts its Secret there); the
chart, not kopf, owns the ValidatingWebhookConfiguration.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from trail_contract.probe_format import ProbeFormatError, read_header
from trail_operator import crd, kube
from trail_operator.reconcile import ProbeSourceError, probe_bytes, probe_ref
from trail_operator.spec import LLMServerSpec, SpecError, parse_spec

HANDLER_ID = "validate"  # the URL path the ValidatingWebhookConfiguration calls: /validate
DEFAULT_PORT = 9443


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int


BUNDLED_MODEL = ModelShape(hidden_size=576, num_layers=30)  # SmolLM2-135M-Instruct


def configure(settings: kopf.OperatorSettings) -> None:
    """Serve the webhook over TLS when the chart gave the operator a certificate; else serve nothing."""
    cert_dir = os.environ.get("TRAIL_WEBHOOK_CERT_DIR")
    if not cert_dir:
        settings.admission.server = _no_server  # kopf refuses to start with a handler and no server
        return
    settings.admission.server = kopf.WebhookServer(
        addr="0.0.0.0",
        port=int(os.environ.get("TRAIL_WEBHOOK_PORT", DEFAULT_PORT)),
        certfile=Path(cert_dir) / "tls.crt",
        pkeyfile=Path(cert_dir) / "tls.key",
    )


async def _no_server(fn: Any) -> AsyncIterator[Any]:
    """A webhook "server" that never listens (the webhook is off) until the operator stops."""
    await asyncio.Event().wait()
    yield  # never reached: it only makes this the async generator kopf expects


def probe_problem(spec: LLMServerSpec, data: bytes) -> str | None:
    """Why the probe file ``data`` cannot read the model (None: it can, or the model's shape is unknown here)."""
    try:
        meta = read_header(data).trail
    except ProbeFormatError as error:
        return f"spec.scheduler.probe: {error}"
    shape = BUNDLED_MODEL if spec.model.bundled else None
    if shape is None:
        return None
    hidden, layer = meta.get("hidden_size"), spec.scheduler.probe.layer
    layer = meta.get("layer") if layer is None else layer
    if hidden != shape.hidden_size:
        return f"spec.scheduler.probe: the probe reads hidden size {hidden}, the bundled model has {shape.hidden_size}"
    if not isinstance(layer, int) or not 0 <= layer < shape.num_layers:
        return (
            f"spec.scheduler.probe: the probe reads layer {layer}, the bundled model has "
            f"{shape.num_layers} layers (0 to {shape.num_layers - 1})"
        )
    return None


@kopf.on.validate(crd.GROUP, crd.VERSION, crd.PLURAL, id=HANDLER_ID, operations=["CREATE", "UPDATE"])
async def validate(
    spec: kopf.Spec, old: kopf.Body | None, operation: str, namespace: str, memo: kopf.Memo, **_: Any
) -> None:
    if operation == "UPDATE" and old is not None and old.get("spec") == spec:
        # Metadata writes (the operator's own annotations, and the finalizer it removes on
        # deletion) must pass even for a spec stored before the webhook was turned on.
        return
    try:
        parsed = parse_spec(dict(spec))
    except SpecError as error:
        raise kopf.AdmissionError(str(error), code=422) from None
    ref = probe_ref(parsed)
    if ref is None:
        return
    try:
        data = probe_bytes(await kube.get(memo.ctx.client, "ConfigMap", namespace, ref.name), ref, namespace)
    except (kube.KubeError, ProbeSourceError):
        return  # not readable (yet): the operator reports it on the LLMServer's status
    problem = probe_problem(parsed, data)
    if problem is not None:
        raise kopf.AdmissionError(problem, code=422)
