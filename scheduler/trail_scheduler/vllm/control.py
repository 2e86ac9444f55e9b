"""The typed link between the API server and the TRAIL scheduler in the engine core.

vLLM's utility calls run ``getattr(engine_core, name)(*args)`` in the engine-core
loop between steps; the name ``"scheduler"`` resolves to the TRAIL scheduler, whose
``__call__`` hands one of :data:`METHODS` to its control plane. The channel carries plain
data, so each side speaks the wire models below and converts at the boundary:
:class:`EngineControl` is the API server's end,
:class:`~trail_scheduler.vllm.control_plane.ControlPlane` the engine's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from trail_contract.admin_api import ConfigUpdate, ConfigView, StatsView

UTILITY = "scheduler"
METHODS = ("config", "apply", "stats", "drain_metrics")


class SettingsRefused(ValueError):
    """The engine refused a change (invalid for this model or probe); nothing changed."""


class GenerationConflict(SettingsRefused):
    """The change's generation is older than the one in force (a stale or replayed change)."""


class ApplyReply(BaseModel):
    config: ConfigView | None = None
    error: str | None = None
    conflict: bool = False  # the error is a generation older than the one in force


class MetricsDrain(BaseModel):
    """Counts and observations since the last drain, and the settings then in force."""

    preemptions: dict[str, int] = Field(default_factory=dict)  # reason -> count
    decisions: dict[str, int] = Field(default_factory=dict)  # decision -> count
    errors: list[tuple[str, float]] = Field(default_factory=list)  # (stage, |error|)
    predicted_remaining: list[float] = Field(default_factory=list)
    probe_failures: int = 0  # failures the workers reported (each drops the probe it ran)
    resumed_tokens: dict[str, int] = Field(default_factory=dict)  # source -> tokens resumed requests needed again
    preempted_generated: list[tuple[str, int]] = Field(default_factory=list)  # (reason, generated) per preemption
    predicted_backlog_tokens: float = 0.0  # as in StatsView: the engine's work left, now
    predicted_drain_seconds: float | None = None
    config: ConfigView  # the prediction guard's level and measures included


class EngineControl:
    """The engine's TRAIL methods, called from the API server's event loop."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    async def _call(self, method: str, *args: Any) -> Any:
        return await self._engine.engine_core.call_utility_async(UTILITY, method, *args)

    async def config(self) -> ConfigView:
        return ConfigView.model_validate(await self._call("config"))

    async def apply(self, update: ConfigUpdate, probe_bytes: bytes | None = None) -> ConfigView:
        """Validate and commit a change in the engine; raise SettingsRefused if it is refused."""
        body = update.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"probe"})
        reply = ApplyReply.model_validate(await self._call("apply", body, probe_bytes))
        if reply.error is not None:
            raise (GenerationConflict if reply.conflict else SettingsRefused)(reply.error)
        return reply.config

    async def stats(self) -> StatsView:
        return StatsView.model_validate(await self._call("stats"))

    async def drain_metrics(self) -> MetricsDrain:
        return MetricsDrain.model_validate(await self._call("drain_metrics"))
