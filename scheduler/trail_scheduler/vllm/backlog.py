"""The predicted backlog of one engine: how much work it still has, in tokens and in
seconds, for routing and autoscaling across pods.

The backlog is the sum of the predicted remaining output tokens of every running and
waiting request (the scheduler's current beliefs). Its drain time divides it by the
output rate this engine measured while busy: idle gaps are left out of the rate, so a
pod that waited for traffic does not look slow when traffic returns, and the last
measured rate is kept while the pod idles.
"""

from __future__ import annotations

from collections import deque

RATE_WINDOW_SECONDS = 30.0  # the steps the rate is measured over
IDLE_GAP_SECONDS = 1.0  # a longer pause between steps is idle time, not decode time


class OutputRate:
    """Output tokens per second over the busy steps of the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, idle_gap: float = IDLE_GAP_SECONDS) -> None:
        self._window, self._idle_gap = window, idle_gap
        self._steps: deque[tuple[float, float, int]] = deque()  # (when, seconds since the step before, tokens)
        self._seconds, self._tokens = 0.0, 0  # the window's totals, kept as steps come and go (every engine step)
        self._last_step: float | None = None
        self._last_rate: float | None = None

    def step(self, now: float, tokens: int) -> None:
        """A step that finished at ``now`` (monotonic seconds) and produced ``tokens``."""
        if self._last_step is not None and 0 < now - self._last_step <= self._idle_gap:
            self._steps.append((now, now - self._last_step, tokens))
            self._seconds += now - self._last_step
            self._tokens += tokens
        self._last_step = now
        self._forget(now)
        if self._steps and self._seconds > 0:
            self._last_rate = self._tokens / self._seconds

    def _forget(self, now: float) -> None:
        while self._steps and self._steps[0][0] < now - self._window:
            _, seconds, tokens = self._steps.popleft()
            self._seconds -= seconds
            self._tokens -= tokens

    def per_second(self) -> float | None:
        """The measured rate; None before two steps close enough together were seen."""
        return self._last_rate


def drain_seconds(backlog_tokens: float, rate: float | None) -> float | None:
    """Seconds to produce the backlog at ``rate``: 0 with nothing to do, None while no rate is measured."""
    if backlog_tokens <= 0:
        return 0.0
    if not rate:
        return None
    return backlog_tokens / rate
