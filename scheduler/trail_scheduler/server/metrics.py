"""Prometheus metrics prefixed ``trail_``, next to vLLM's own on ``/metrics``.

The scheduler counts in the engine-core process; a poller in the API-server process
drains those counts over RPC every second and records them here, so no
observation is lost and the scrape never waits on the engine.
"""

from __future__ import annotations

import asyncio
import logging
import math

from prometheus_client import Counter, Gauge, Histogram

from trail_contract.admin_api import ConfigView, GuardView
from trail_contract.settings import CHOICE_SETTINGS, SchedulerSettings
from trail_scheduler.vllm.control import EngineControl, MetricsDrain

logger = logging.getLogger("trail.metrics")

TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

PREEMPTIONS = Counter(
    "trail_preemptions", "Requests preempted, by reason (policy: TRAIL; memory: KV-cache pressure)", ["reason"]
)
DECISIONS = Counter(
    "trail_requests",
    "Scheduling decisions by the policy (admit; promote: admitted by the starvation guard)",
    ["decision"],
)
PREDICTED_REMAINING = Histogram(
    "trail_predicted_remaining_tokens",
    "Predicted remaining output length of running requests (sampled each second)",
    buckets=TOKEN_BUCKETS,
)
PREDICTION_ERROR = Histogram(
    "trail_prediction_abs_error_tokens",
    "Absolute length-prediction error per finished request: stage=prompt (prompt predictor), "
    "first (first embedding estimate), refined (mean over the answer's tokens)",
    ["stage"],
    buckets=TOKEN_BUCKETS,
)
PREEMPTED_GENERATED = Histogram(
    "trail_preempted_generated_tokens",
    "Tokens a request had generated when it was preempted, by reason: many near zero is churn "
    "(admitted, a first token, displaced), which buys time to first token with recomputation",
    ["reason"],
    buckets=(0, *TOKEN_BUCKETS),
)
RESUMED_TOKENS = Counter(
    "trail_resumed_tokens",
    "Tokens a preempted request needed again when it resumed: source=prefix_cache (blocks still cached), "
    "recomputed (prefilled again)",
    ["source"],
)
PROBE_FAILURES = Counter(
    "trail_probe_failures", "Probe failures on the workers (each drops the probe; ranking falls back to FCFS)"
)
PROBE_FAILED = Gauge("trail_probe_failed", "1 while the probe in force has failed (ranking: first come, first served)")
GUARD_LEVEL = Gauge(
    "trail_prediction_guard_level",
    "How far the prediction guard has fallen back: 0 trusting (the policy as set), 1 no preemption (as c = 0), "
    "2 arrival order (first come, first served)",
)
GUARD_RANK_CORRELATION = Gauge(
    "trail_prediction_guard_rank_correlation",
    "Somers' D of the length predictions against the lengths, over the pairs of recent requests whose order is "
    "known (NaN: none yet); prediction: first (decides preemption) or prompt (orders the queue)",
    ["prediction"],
)
GUARD_REGRET_RATIO = Gauge(
    "trail_prediction_guard_regret_ratio",
    "Share of the last resolved preemptions whose victim had less left than its displacer (NaN: none yet)",
)
# One gauge per numeric setting, named after the settings model's field (unset: 0); a setting
# that names a choice (the policy, the refinement prior) has one series per choice, 1 for the one in force.
SETTINGS = {
    name: Gauge(f"trail_setting_{name}", f"Setting in force: {info.description} (unset: 0)")
    for name, info in SchedulerSettings.model_fields.items()
    if name not in CHOICE_SETTINGS
}
SETTING_CHOICES = {
    name: Gauge(f"trail_setting_{name}", f"1 for the {name.replace('_', ' ')} in force", [name])
    for name in CHOICE_SETTINGS
}
SETTING_GENERATION = Gauge("trail_setting_generation", "Generation of the settings in force")
# What this pod still has to do, for routing (an endpoint picker) and autoscaling across pods.
PREDICTED_BACKLOG = Gauge(
    "trail_predicted_backlog_tokens", "Predicted remaining output tokens of every running and waiting request"
)
PREDICTED_DRAIN = Gauge(
    "trail_predicted_drain_seconds",
    "The predicted backlog over the output token rate this pod measured while busy (NaN until measured)",
)


def record(drained: MetricsDrain) -> None:
    """Fold one drain of the engine's counters into the metrics."""
    for reason, count in drained.preemptions.items():
        PREEMPTIONS.labels(reason).inc(count)
    for decision, count in drained.decisions.items():
        DECISIONS.labels(decision).inc(count)
    for stage, value in drained.errors:
        PREDICTION_ERROR.labels(stage).observe(value)
    for value in drained.predicted_remaining:
        PREDICTED_REMAINING.observe(value)
    for reason, generated in drained.preempted_generated:
        PREEMPTED_GENERATED.labels(reason).observe(generated)
    for source, tokens in drained.resumed_tokens.items():
        RESUMED_TOKENS.labels(source).inc(tokens)
    PROBE_FAILURES.inc(drained.probe_failures)
    PREDICTED_BACKLOG.set(drained.predicted_backlog_tokens)
    drain = drained.predicted_drain_seconds
    PREDICTED_DRAIN.set(float("nan") if drain is None else drain)
    record_config(drained.config)


def record_guard(guard: GuardView) -> None:
    GUARD_LEVEL.set(guard.level.fallback)
    for prediction, correlation in (("first", guard.rank_correlation), ("prompt", guard.prompt_rank_correlation)):
        GUARD_RANK_CORRELATION.labels(prediction).set(math.nan if correlation is None else correlation)
    GUARD_REGRET_RATIO.set(math.nan if guard.regret_ratio is None else guard.regret_ratio)


def record_config(config: ConfigView) -> None:
    for name, gauge in SETTINGS.items():
        gauge.set(getattr(config, name) or 0)
    SETTING_GENERATION.set(config.generation)
    PROBE_FAILED.set(1 if config.probe_failure is not None else 0)
    if config.prediction_guard_state is not None:
        record_guard(config.prediction_guard_state)
    for name, gauge in SETTING_CHOICES.items():
        for choice in CHOICE_SETTINGS[name]:
            gauge.labels(choice.value).set(1 if choice == getattr(config, name) else 0)


async def poll_engine(engine, interval: float = 1.0) -> None:
    """Drain the engine's TRAIL counters forever (cancelled at shutdown)."""
    control = EngineControl(engine)
    while True:
        try:
            record(await control.drain_metrics())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the engine may be restarting or shutting down
            logger.debug("TRAIL metrics poll failed: %s", error)
        await asyncio.sleep(interval)
