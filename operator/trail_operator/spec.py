"""Typed view of ``LLMServer.spec`` for the builders, with the CRD's rules re-checked.

The API server enforces the CRD (schema and CEL rules) before the operator sees an
object; the operator checks again because it must never half-apply a bad spec that got
past it (a CRD installed without its rules, an emulated API server in tests). The
rules mirror ``crds/llmserver.yaml``; tests/operator/test_schema.py runs every invalid
manifest through both so they cannot drift apart. Defaults come from the CRD
(:func:`trail_operator.crd.defaulted_spec`), not from here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from trail_contract.settings import SchedulerSettings
from trail_contract.wire import explain
from trail_operator.crd import defaulted_spec
from trail_operator.engine_flags import check_extra_args

SHA256 = r"^[0-9a-f]{64}$"
# Environment variables the operator sets in the server container (the builders), which
# engine.env must not override: the admin token (pods read it from a file; `trail serve`
# would fall back to the variable) and the Hugging Face cache. HF_TOKEN is reserved only
# when model.huggingFace.tokenSecretRef sets it.
RESERVED_ENV = ("TRAIL_ADMIN_TOKEN", "HF_HOME")
HOSTNAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class SpecError(ValueError):
    """The spec is invalid; the message says which field and why."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(_Model):
    name: str = Field(min_length=1)
    key: str


class HuggingFace(_Model):
    id: str = Field(min_length=1)
    revision: str | None = None
    token_secret_ref: SecretKeyRef | None = None


class PvcSource(_Model):
    claim_name: str = Field(min_length=1)
    path: str

    @model_validator(mode="after")
    def _relative(self) -> PvcSource:
        _check_relative("model.pvc.path", self.path)
        return self


class UrlSource(_Model):
    url: str = Field(pattern=r"^https?://")
    sha256: str | None = Field(default=None, pattern=SHA256)
    max_bytes: int = Field(ge=1, le=1 << 40)


class ModelSource(_Model):
    bundled: bool | None = None
    hugging_face: HuggingFace | None = None
    pvc: PvcSource | None = None
    url: UrlSource | None = None
    served_model_name: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [bool(self.bundled), self.hugging_face is not None, self.pvc is not None, self.url is not None]
        if sum(given) != 1:
            raise ValueError("model needs exactly one source: bundled: true, huggingFace, pvc or url")
        return self


QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


class CacheClaim(_Model):
    storage_class_name: str | None = Field(default=None, min_length=1)
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"]


class Cache(_Model):
    size: str = Field(pattern=QUANTITY)
    persistent_volume_claim: CacheClaim | None = None


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str = ""


class Engine(_Model):
    image: str | None = None
    tensor_parallel_size: int = Field(ge=1, le=16)
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = None
    extra_args: tuple[Annotated[str, Field(max_length=4096)], ...] = ()
    env: tuple[EnvVar, ...] = ()

    @field_validator("extra_args")
    @classmethod
    def _as_the_engine_parses_them(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        problems = check_extra_args(args)
        if problems:
            raise ValueError("; ".join(problems))
        return args

    @model_validator(mode="after")
    def _no_reserved_env(self) -> Engine:
        for var in self.env:
            if var.name in RESERVED_ENV:
                raise ValueError(f"engine.env must not set {var.name}: the operator sets it")
        return self


class Resources(_Model):
    gpus: int = Field(ge=0, le=16)
    gpu_resource_name: str
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ProbeSpec(_Model):
    config_map_key_ref: SecretKeyRef | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    path: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256)
    layer: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> ProbeSpec:
        sources = [self.config_map_key_ref is not None, self.url is not None, self.path is not None]
        if sum(sources) != 1:
            raise ValueError("scheduler.probe needs exactly one source: configMapKeyRef, url or path")
        if (self.url is not None or self.path is not None) and self.sha256 is None:
            raise ValueError("scheduler.probe.url and scheduler.probe.path need scheduler.probe.sha256")
        if self.path is not None:
            _check_relative("scheduler.probe.path", self.path)
        return self


class Scheduler(SchedulerSettings):
    """``spec.scheduler``: the scheduler settings (the shared model, ranges and all) and the probe."""

    probe: ProbeSpec | None = None
    probe_hosts: tuple[str, ...] = Field(default=(), max_length=16)

    @model_validator(mode="after")
    def _hostnames(self) -> Scheduler:
        for host in self.probe_hosts:
            if not re.fullmatch(HOSTNAME, host) or len(host) > 253:
                raise ValueError(f"scheduler.probeHosts: {host!r} is not a lower-case DNS name or IPv4 address")
        return self


class UpdateStrategy(_Model):
    max_surge: int = Field(ge=0, le=1000)
    max_unavailable: int = Field(ge=0, le=1000)

    @model_validator(mode="after")
    def _can_progress(self) -> UpdateStrategy:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("updateStrategy: maxSurge and maxUnavailable must not both be 0")
        return self


class DisruptionBudget(_Model):
    max_unavailable: int = Field(ge=0, le=1000)


class EndpointPicker(_Model):
    name: str | None = Field(default=None, min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    failure_mode: Literal["FailOpen", "FailClose"]


class InferencePool(_Model):
    enabled: bool
    endpoint_picker: EndpointPicker


class Routing(_Model):
    inference_pool: InferencePool


class LLMServerSpec(_Model):
    replicas: int = Field(ge=0, le=1000)
    update_strategy: UpdateStrategy
    disruption_budget: DisruptionBudget
    model: ModelSource
    cache: Cache
    engine: Engine
    resources: Resources
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    runtime_class_name: str | None = None
    routing: Routing
    scheduler: Scheduler

    @model_validator(mode="after")
    def _cross_field(self) -> LLMServerSpec:
        limit = self.resources.gpus if self.resources.gpus > 0 else 1
        if self.engine.tensor_parallel_size > limit:
            raise ValueError(
                f"engine.tensorParallelSize ({self.engine.tensor_parallel_size}) must not exceed "
                f"resources.gpus ({self.resources.gpus}; 1 on CPU)"
            )
        hf = self.model.hugging_face
        if hf is not None and hf.token_secret_ref is not None and any(v.name == "HF_TOKEN" for v in self.engine.env):
            raise ValueError("engine.env must not set HF_TOKEN: model.huggingFace.tokenSecretRef sets it")
        probe = self.scheduler.probe
        if probe is not None and probe.path is not None and self.model.pvc is None and self.model.url is None:
            raise ValueError("scheduler.probe.path needs a model volume: use model.pvc or model.url")
        return self


def _check_relative(field: str, path: str) -> None:
    if path.startswith("/") or ".." in path:
        raise ValueError(f"{field} must be relative and must not contain '..', got {path!r}")


def parse_spec(spec: dict[str, Any] | None) -> LLMServerSpec:
    """Default (from the CRD) and validate a raw spec; :class:`SpecError` says what is wrong."""
    try:
        return LLMServerSpec.model_validate(defaulted_spec(spec or {}))
    except ValidationError as error:
        raise SpecError(explain(error, "spec.")) from None
