"""The TRAIL section of vLLM's ``additional_config``: how ``trail serve`` hands its
start-up settings to the engine-core process (scheduler and worker read the same)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trail_scheduler.api import SchedulerSettings

CONFIG_KEY = "trail"
SCHEDULER_CLS = "trail_scheduler.vllm.scheduler.trail_scheduler"  # vLLM's --scheduler-cls: a factory


@dataclass(frozen=True)
class TrailEngineConfig:
    settings: SchedulerSettings = field(default_factory=SchedulerSettings)
    probe_path: str | None = None
    # The decoder layer whose output is captured; None: the probe's, else a third of the depth.
    probe_layer: int | None = None
    generation: int = 0
    # Collection mode (``trail probe collect``): also capture these layers and write each
    # finished request's prompt-mean and per-token states to shards under collect_dir.
    collect_dir: str | None = None
    collect_layers: tuple[int, ...] = ()
    collect_shard_size: int = 64

    def to_additional_config(self) -> dict[str, Any]:
        return {
            CONFIG_KEY: {
                "settings": self.settings.wire(),
                "probe_path": self.probe_path,
                "probe_layer": self.probe_layer,
                "generation": self.generation,
                "collect_dir": self.collect_dir,
                "collect_layers": list(self.collect_layers),
                "collect_shard_size": self.collect_shard_size,
            }
        }

    @classmethod
    def from_vllm_config(cls, vllm_config: Any) -> TrailEngineConfig:
        raw = (getattr(vllm_config, "additional_config", None) or {}).get(CONFIG_KEY) or {}
        return cls(
            settings=SchedulerSettings.model_validate(raw.get("settings", {})),
            probe_path=raw.get("probe_path"),
            probe_layer=raw.get("probe_layer"),
            generation=int(raw.get("generation", 0)),
            collect_dir=raw.get("collect_dir"),
            collect_layers=tuple(int(layer) for layer in raw.get("collect_layers") or ()),
            collect_shard_size=int(raw.get("collect_shard_size", 64)),
        )
