"""Predictors shipped for the bundled SmolLM2-135M-Instruct (package data; see MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).parent
SHIPPED_PROBE = SHIPPED_DIR / "smollm2-135m-instruct.probe.safetensors"
SHIPPED_PROMPT_PREDICTOR = SHIPPED_DIR / "smollm2-135m-instruct.prompt.safetensors"
# The prompts the shipped predictors never saw: `trail bench` draws from them by default.
SHIPPED_BENCHMARK_SPLIT = SHIPPED_DIR / "smollm2-135m-instruct.benchmark-split.json"
