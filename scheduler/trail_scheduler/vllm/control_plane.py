"""The TRAIL scheduler's control plane: the settings and probe in force, changed through
the admin API between engine steps, and what the scheduler reports.

One object the scheduler holds, apart from its per-step decision path: it re-tunes that
path's parts (the kept decision, the tracker, the prediction guard) and reads the
scheduler's requests for its reports. A change is validated, committed at once and handed
to the workers with the next step's ``SchedulerOutput`` (see :mod:`trail_scheduler.vllm.runner`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trail_contract.admin_api import ConfigUpdate, ConfigView, GuardView, ProbeInfo, RequestStats, StatsView
from trail_contract.settings import PolicyName, SchedulerSettings
from trail_contract.wire import explain
from trail_scheduler.core.bins import LengthBins
from trail_scheduler.probe import LoadedProbe, ProbeFileError, load_probe
from trail_scheduler.vllm.backlog import drain_seconds
from trail_scheduler.vllm.control import METHODS, ApplyReply, MetricsDrain
from trail_scheduler.vllm.engine_config import TrailEngineConfig
from trail_scheduler.vllm.runner import RunnerUpdate, capture_layer

if TYPE_CHECKING:
    from trail_scheduler.vllm.scheduler import TrailSchedulingMixin

logger = logging.getLogger("vllm.trail.scheduler")  # the scheduler's: only vLLM's loggers reach the engine log


@dataclass(frozen=True)
class ProbeIdentity:
    """The probe in force as the scheduler knows it: the workers hold its weights."""

    sha256: str
    layer: int
    hidden_size: int
    bins: LengthBins
    model: str | None


class ControlPlane:
    """The admin API's way into the engine: vLLM's utility call reaches :meth:`dispatch`
    through the scheduler's ``__call__``."""

    def __init__(self, scheduler: TrailSchedulingMixin, config: TrailEngineConfig) -> None:
        self._scheduler = scheduler
        self.settings = config.settings
        self.generation = config.generation
        self.probe_failure: str | None = None  # why the workers dropped the probe in force
        self.pending_update: RunnerUpdate | None = None  # for the workers, with the next step's output
        probe = load_probe(config.probe_path) if config.probe_path else None  # as the runner did
        self.layer = capture_layer(config, probe, scheduler.vllm_config.model_config)
        self.probe: ProbeIdentity | None = None
        self.set_probe(probe)

    def dispatch(self, method: str, update: dict | None, probe_bytes: bytes | None) -> dict[str, Any]:
        """One of :data:`~trail_scheduler.vllm.control.METHODS`; replies are wire models as plain data."""
        if method not in METHODS:
            raise ValueError(f"unknown TRAIL method {method!r}")
        if method == "apply":
            try:
                reply = self.apply(ConfigUpdate.model_validate(update or {}), probe_bytes)
            except ValidationError as error:  # the admin API checked it already; other callers may not
                reply = ApplyReply(error=explain(error))
        else:
            reply = getattr(self, method)()
        return reply.model_dump(mode="json", by_alias=True)

    # -- changes ------------------------------------------------------------------
    def apply(self, update: ConfigUpdate, probe_bytes: bytes | None = None) -> ApplyReply:
        """Check a change completely against this engine, then commit it; on error nothing changes."""
        if update.generation is not None and update.generation < self.generation:
            return ApplyReply(
                error=f"generation {update.generation} is older than generation {self.generation} in force; "
                "nothing changed",
                conflict=True,
            )
        scheduler = self._scheduler
        try:
            settings = update.applied_to(self.settings)
            probe = None
            if probe_bytes is not None:
                probe = load_probe(probe_bytes)
                model = scheduler.vllm_config.model_config
                probe_config = TrailEngineConfig(probe_layer=self.layer)
                capture_layer(probe_config, probe, model)  # hidden size, layer range
        except ProbeFileError as error:
            return ApplyReply(error=f"probe rejected: {error}")
        except ValueError as error:
            return ApplyReply(error=str(error))
        self.settings = settings
        scheduler.trail_tracker.follow(settings)
        scheduler.trail_guard.follow(settings)
        self.generation = self.generation + 1 if update.generation is None else update.generation
        if probe is not None:
            self.set_probe(probe)
            self.probe_failure = None
        self.follow_settings()
        # Updates wait for the next step (none comes while the engine is idle): a later
        # settings-only change must not drop a probe still on its way to the workers.
        pending = self.pending_update
        if probe is None and pending is not None:
            probe = pending.probe
        self.pending_update = RunnerUpdate(settings.predict_every, probe)
        logger.info("TRAIL settings generation %d in force: %s", self.generation, settings)
        return ApplyReply(config=self.config())

    def follow_settings(self) -> None:
        """Decide by the settings in force, as far as the prediction guard trusts the predictions;
        length-unaware (first come, first served) while the workers have dropped the probe after
        a failure, until a new probe is applied."""
        settings: SchedulerSettings = self._scheduler.trail_guard.effective(self.settings)
        if self.probe_failure is not None:
            settings = settings.model_copy(update={"policy": PolicyName.FCFS})
        self._scheduler.trail_queues.follow(settings)

    def probe_failed(self, sha256: str, failure: str) -> None:
        """The workers dropped probe ``sha256`` after ``failure``."""
        self._scheduler.trail_metrics.probe_failures += 1
        if self.probe is None or sha256 != self.probe.sha256 or self.probe_failure is not None:
            return  # a probe already replaced, or already known to have failed
        self.probe_failure = f"probe {sha256[:12]} failed on the worker: {failure}"
        self.follow_settings()
        logger.error("%s; ranking first come, first served until a new probe is applied", self.probe_failure)

    def set_probe(self, probe: LoadedProbe | None) -> None:
        if probe is None:
            self.probe = None
            return
        self.probe = ProbeIdentity(probe.sha256, probe.layer, probe.hidden_size, probe.bins, probe.model)
        scheduler = self._scheduler
        scheduler.trail_tracker.set_bins(probe.bins)
        scheduler._trail_changed.update(scheduler.requests)  # estimates may have changed with the bins

    # -- reports ------------------------------------------------------------------
    def config(self) -> ConfigView:
        probe = self.probe
        deciding = self._scheduler.trail_queues.policy.settings
        return ConfigView(
            **self.settings.wire(),
            generation=self.generation,
            probe=None
            if probe is None
            else ProbeInfo(
                sha256=probe.sha256,
                layer=probe.layer,
                hidden_size=probe.hidden_size,
                bins=probe.bins.to_list(),
                model=probe.model,
            ),
            capture_layer=self.layer,
            probe_failure=self.probe_failure,
            effective_policy=deciding.policy,
            effective_c=deciding.c,
            prediction_guard_state=self._guard_view(),
        )

    def stats(self) -> StatsView:
        scheduler = self._scheduler
        return StatsView(
            policy=self.settings.policy,
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            running=[self._request_stats(r, running=True) for r in scheduler.running],
            waiting=[self._request_stats(r, running=False) for r in scheduler.waiting],
            preemptions_total=scheduler.trail_preemptions_total,
            last_decision_seconds=scheduler.trail_last_decision_seconds,
            worker_probe_sha256=scheduler.trail_worker_probe,
            probe_failure=self.probe_failure,
            **self._backlog(),
            prediction_guard=self._guard_view(),
        )

    def drain_metrics(self) -> MetricsDrain:
        scheduler = self._scheduler
        tracker = scheduler.trail_tracker
        predicted = [s.predicted_remaining for r in scheduler.running if (s := tracker.get(r.request_id)) is not None]
        drained = scheduler.trail_metrics.drain(predicted, self.config())
        return drained.model_copy(update=self._backlog())

    def _guard_view(self) -> GuardView:
        guard = self._scheduler.trail_guard
        return GuardView(
            enabled=guard.enabled,
            level=guard.level,
            rank_correlation=guard.rank_correlation,
            prompt_rank_correlation=guard.prompt_rank_correlation,
            pairs=guard.pairs,
            regret_ratio=guard.regret_ratio,
            samples=guard.samples,
            min_samples=guard.min_samples,
            resolved_preemptions=guard.resolved_preemptions,
        )

    def _backlog(self) -> dict[str, Any]:
        """The predicted work left in this engine (StatsView's and MetricsDrain's fields)."""
        scheduler = self._scheduler
        tracker = scheduler.trail_tracker
        tokens = 0.0
        for request in (*scheduler.running, *scheduler.waiting.unordered()):
            state = tracker.get(request.request_id)
            tokens += state.predicted_remaining if state else tracker.unknown_estimate
        rate = scheduler.trail_output_rate.per_second()
        return {"predicted_backlog_tokens": tokens, "predicted_drain_seconds": drain_seconds(tokens, rate)}

    def _request_stats(self, request, running: bool) -> RequestStats:
        scheduler = self._scheduler
        state = scheduler.trail_tracker.get(request.request_id)
        estimate = state.predicted_remaining if state else scheduler.trail_tracker.unknown_estimate
        policy = scheduler.trail_queues.policy
        preemptible = policy.preemptible(scheduler._running_view(request), time.time()) if running else None
        return RequestStats(
            request_id=request.request_id,
            generated_tokens=request.num_output_tokens,
            predicted_remaining=estimate,
            preemptible=preemptible,
            preemptions=request.num_preemptions,
        )
