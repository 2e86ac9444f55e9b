"""How a TRAIL engine is built: vLLM's engine arguments, and the TRAIL section of its
``additional_config`` that hands the start-up settings to the engine-core process
(scheduler and worker read the same). ``trail serve``, ``trail probe collect`` and the
bench's stock-vLLM baseline all start from :func:`engine_args`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trail_contract.settings import SchedulerSettings

CONFIG_KEY = "trail"
SCHEDULER_CLS = "trail_scheduler.vllm.scheduler.trail_scheduler"  # vLLM's --scheduler-cls: a factory
# Engine arguments only TRAIL sets (a user's value would silently unplug it).
TRAIL_ENGINE_ARGS = ("scheduler_cls", "worker_cls", "scheduling_policy", "additional_config")


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


def engine_args(model: str | None, trail: TrailEngineConfig | None) -> dict[str, Any]:
    """vLLM's engine arguments (``EngineArgs`` field names) for ``model``, the bundled model if None.

    The platform's defaults (on CPU: float32, as there is no native bf16; eager start;
    a fixed 1 GiB KV cache in host memory), the bundled model's, and, unless ``trail``
    is None (stock vLLM, for comparison), TRAIL's scheduler, worker and settings.
    """
    from vllm.platforms import current_platform

    from trail_scheduler.assets import BUNDLED_MODEL_NAME, prepare_bundled_model

    args: dict[str, Any] = {}
    if model is None:
        model = str(prepare_bundled_model())
        args |= {"served_model_name": BUNDLED_MODEL_NAME, "max_model_len": 2048}
    if Path(model).is_dir():  # a local checkpoint needs no hub (and there may be none)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpu = current_platform.is_cpu()
    if cpu:
        args |= {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 2**30}
    args["model"] = model
    if trail is not None:
        args |= {
            "scheduler_cls": SCHEDULER_CLS,
            "worker_cls": f"trail_scheduler.vllm.worker.{'TrailCPUWorker' if cpu else 'TrailGPUWorker'}",
            "scheduling_policy": "priority",
            "additional_config": trail.to_additional_config(),
        }
    return args
