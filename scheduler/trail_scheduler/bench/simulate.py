"""What an ideal order could gain on a workload, before an hour of runs says so.

A fluid model of the engine: ``slots`` batch slots, each decoding at ``1 / slots`` of the
engine's capacity (output tokens per unit time), no prefill and no preemption cost. On it,
first come first served against shortest remaining first (preemptive, true lengths, free
preemption) bounds what any length-aware scheduler can gain over FCFS on these requests:
the real oracle (TRAIL+) pays for prefill, recomputation and limited preemption, and
smaller batches decode faster per request, so measured ratios land at or above this one.
Time is in units of (tokens / capacity), so the ratio does not depend on the capacity.
"""

from __future__ import annotations

from collections.abc import Sequence


def mean_latency(lengths: Sequence[int], arrivals: Sequence[float], slots: int, shortest_first: bool) -> float:
    """Mean (finish - arrival) over the requests, with capacity 1 output token per unit time."""
    if len(lengths) != len(arrivals) or not lengths or slots < 1:
        raise ValueError("need one arrival per length, at least one request and one slot")
    speed = 1.0 / slots
    remaining = [float(n) for n in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (arrivals[i], i))
    waiting: list[int] = []  # arrived, not running
    running: list[int] = []
    finish = [0.0] * len(lengths)
    now, next_arrival = 0.0, 0

    def fill() -> None:
        if shortest_first:  # the `slots` shortest remaining run; the rest wait (preemption is free)
            pool = sorted(running + waiting, key=lambda i: (remaining[i], arrivals[i], i))
            running[:], waiting[:] = pool[:slots], pool[slots:]
        else:
            while waiting and len(running) < slots:
                running.append(waiting.pop(0))

    while next_arrival < len(order) or running or waiting:
        if not running and not waiting:
            now = max(now, arrivals[order[next_arrival]])
        while next_arrival < len(order) and arrivals[order[next_arrival]] <= now:
            waiting.append(order[next_arrival])
            next_arrival += 1
        fill()
        first_done = min(remaining[i] for i in running) / speed
        until_arrival = arrivals[order[next_arrival]] - now if next_arrival < len(order) else float("inf")
        step = min(first_done, until_arrival)
        now += step
        for i in list(running):
            remaining[i] -= step * speed
            if remaining[i] <= 1e-9:
                running.remove(i)
                finish[i] = now
    return sum(f - a for f, a in zip(finish, arrivals)) / len(lengths)


def ideal_ratio(lengths: Sequence[int], arrivals: Sequence[float], slots: int) -> float:
    """Shortest-remaining-first's mean latency over FCFS's on the fluid engine (≤ 1)."""
    return mean_latency(lengths, arrivals, slots, True) / mean_latency(lengths, arrivals, slots, False)
