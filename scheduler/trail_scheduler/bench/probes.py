"""An untrained probe of the reference shape, for smoke runs and overhead timing.

It costs exactly what a trained probe of the same shape costs to run, and exercises
the live probe load, but its predictions are noise: never report quality with it.
"""

from __future__ import annotations

from pathlib import Path

from trail_scheduler.assets import BUNDLED_MODEL_NAME

BUNDLED_HIDDEN_SIZE, BUNDLED_LAYER = 576, 10


def untrained_probe(path: Path, seed: int = 0) -> Path:
    import torch

    from trail_scheduler.core.bins import LengthBins
    from trail_scheduler.probe import LengthProbe, save_probe

    torch.manual_seed(seed)
    save_probe(
        LengthProbe(BUNDLED_HIDDEN_SIZE, 10).eval(),
        LengthBins.uniform(),
        path,
        model=BUNDLED_MODEL_NAME,
        layer=BUNDLED_LAYER,
        training={"recipe": "untrained (trail_scheduler.bench.probes): timing and smoke only"},
    )
    return path
