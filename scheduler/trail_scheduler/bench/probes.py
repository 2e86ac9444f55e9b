"""Predictors made for the bench's controlled tests.

- An untrained probe of the reference shape, for smoke runs and overhead timing: it costs
  exactly what a trained probe of the same shape costs to run, and exercises the live probe
  load, but its predictions are noise: never report quality with it.
- A copy of a probe or prompt predictor with its bins reversed: a valid file that passes
  every check and predicts long where the original predicts short. It stands in for traffic
  unlike the training data, to show what TRAIL does when its predictions are wrong.
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


def reversed_bins(source: Path, path: Path) -> Path:
    """Write ``source`` with its output bins reversed (the last layer's rows flipped: the mass
    the original puts on bin k goes to bin K-1-k) to ``path``; its training record says so."""
    import torch

    from trail_scheduler.probe import load_probe, save_probe

    loaded = load_probe(source)
    last = loaded.module.fc2
    with torch.no_grad():
        last.weight.copy_(last.weight.flip(0))
        last.bias.copy_(last.bias.flip(0))
    save_probe(
        loaded.module,
        loaded.bins,
        path,
        model=loaded.model,
        layer=loaded.layer,
        training={**loaded.training, "bins_reversed_from": loaded.sha256},
        prompt_reading=loaded.prompt_reading,
    )
    return path


def reversed_predictors(which: str, probe: Path, prompt_predictor: Path, folder: Path) -> tuple[Path, Path]:
    """The probe reversed, and the prompt predictor too if ``which`` is "both", written into
    ``folder``: the (probe, prompt predictor) pair to serve."""
    probe = reversed_bins(probe, folder / probe.name)
    if which == "both":
        prompt_predictor = reversed_bins(prompt_predictor, folder / prompt_predictor.name)
    return probe, prompt_predictor
