"""Answer lengths as chat traffic mixes them, which a pool of answers is resampled to.

The bundled model answers about half of its benchmark prompts at the length cap, which
leaves a length-aware scheduler little to reorder; chat traffic has many short answers and
a tail at the cap. A mix is a lognormal below the cap with a point mass at it, both given as
shares of the cap so that it follows the cap. Benchmarks (profiled prompts) and simulated
bursts (recorded answers) draw from it the same way: each length bin gets its quota, drawn
from the pool's items of that length. Items are chosen by their length only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class LengthMix:
    name: str
    median: float  # the median answer, as a share of the cap
    at_cap: float  # the share of answers that reach the cap
    bins: int = 10  # equal-mass length bins below the cap (plus one at it)

    def __post_init__(self) -> None:
        if not (0 < self.median < 1 and 0 < self.at_cap < 1 and self.bins >= 1):
            raise ValueError(f"a length mix needs 0 < median < 1, 0 < at_cap < 1 and a bin, got {self}")

    def _log_length(self, cap: int) -> NormalDist:
        """The log answer length's distribution below the cap (its mass above the cap is ``at_cap``)."""
        median = self.median * cap
        return NormalDist(math.log(median), math.log(cap / median) / NormalDist().inv_cdf(1 - self.at_cap))

    def quotas(self, count: int, cap: int) -> list[tuple[int, int, int]]:
        """(shortest, longest, items) per length bin, bounds inclusive; the quotas sum to ``count``
        (largest remainders) and the last bin is the cap's."""
        if cap < 2:
            raise ValueError(f"a length mix needs an output cap of at least 2 tokens, got {cap}")
        log_length, below = self._log_length(cap), 1 - self.at_cap
        inner = (round(math.exp(log_length.inv_cdf(k * below / self.bins))) for k in range(1, self.bins))
        edges = sorted({1, cap, *(e for e in inner if 1 < e < cap)})
        cumulative = [0.0, *(log_length.cdf(math.log(e)) for e in edges[1:-1]), below]
        masses = [high - low for low, high in zip(cumulative, cumulative[1:])] + [self.at_cap]
        bounds = [(low, high - 1) for low, high in zip(edges, edges[1:])] + [(cap, cap)]
        exact = [count * mass for mass in masses]
        quotas = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: quotas[i] - exact[i])
        for i in by_remainder[: count - sum(quotas)]:
            quotas[i] += 1
        return [(low, high, quota) for (low, high), quota in zip(bounds, quotas)]

    def draw(self, items: Sequence[T], length: Callable[[T], int], count: int, cap: int, seed: int) -> list[T]:
        """``count`` items whose lengths (capped at ``cap``) follow the mix, drawn by ``seed`` in a
        random order; a bin with fewer items than its quota is an error that names it."""
        if count < 1:
            raise ValueError(f"need at least one item, got {count}")
        rng = random.Random(seed)
        chosen: list[T] = []
        for lowest, highest, quota in self.quotas(count, cap):
            members = [item for item in items if lowest <= min(length(item), cap) <= highest]
            if len(members) < quota:
                raise ValueError(
                    f"the {self.name} length mix needs {quota} answers of {lowest}-{highest} tokens and the pool has "
                    f"{len(members)}: ask for fewer, or give a larger pool"
                )
            chosen += rng.sample(members, quota)
        rng.shuffle(chosen)
        return chosen


# The TRAIL paper's ShareGPT workload on Llama-3-8B: median answer 243 tokens, 21% at the 512 cap.
CHAT_MIX = LengthMix("chat", median=243 / 512, at_cap=0.21)
LENGTH_MIXES = {"natural": None, "chat": CHAT_MIX}  # by name; natural: the pool's own lengths, drawn uniformly
