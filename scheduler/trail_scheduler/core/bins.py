"""Length bins: the classes a probe predicts, and their representative lengths."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class LengthBins:
    """Contiguous bins over remaining output length, given by their edges.

    ``edges`` has K+1 increasing values starting at 0. The last edge may be
    ``math.inf`` (an open-ended top bin). Lengths at or past the last finite edge
    fall into the top bin, so every length has a bin.
    """

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.edges)
        object.__setattr__(self, "edges", edges)
        if len(edges) < 3:
            raise ValueError(f"need at least 2 bins (3 edges), got edges {list(edges)}")
        if edges[0] != 0.0:
            raise ValueError(f"the first bin edge must be 0, got {edges[0]}")
        if any(math.isnan(e) for e in edges) or any(math.isinf(e) for e in edges[:-1]):
            raise ValueError(f"bin edges must be finite (only the last may be inf): {list(edges)}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bin edges must be strictly increasing: {list(edges)}")

    @classmethod
    def uniform(cls, count: int = 10, max_length: float = 512.0) -> LengthBins:
        """The reference setup: ``count`` equal bins over ``[0, max_length]``."""
        if count < 2 or not max_length > 0:
            raise ValueError(f"uniform bins need count >= 2 and max_length > 0, got {count}, {max_length}")
        width = max_length / count
        return cls(tuple(i * width for i in range(count)) + (float(max_length),))

    @classmethod
    def log_spaced(
        cls, count: int = 12, max_length: float = 8192.0, first_edge: float = 16.0, open_top: bool = True
    ) -> LengthBins:
        """Bins ``[0, first_edge)`` then geometric up to ``max_length``.

        For long contexts: an error of 50 tokens matters for a 100-token answer,
        not for a 5,000-token one. With ``open_top`` the last bin has no upper end.
        """
        if count < 3 or not 0 < first_edge < max_length:
            raise ValueError(
                f"log bins need count >= 3 and 0 < first_edge < max_length, got {count}, {first_edge}, {max_length}"
            )
        inner = count - 1 if not open_top else count - 2
        ratio = (max_length / first_edge) ** (1.0 / inner)
        edges = [0.0] + [first_edge * ratio**i for i in range(inner + 1)]
        edges[-1] = float(max_length)
        if open_top:
            edges.append(math.inf)
        return cls(tuple(edges))

    @property
    def count(self) -> int:
        return len(self.edges) - 1

    @cached_property
    def widths(self) -> tuple[float, ...]:
        """Width of each bin; an open top bin counts as wide as the bin below it
        times the growth ratio of the two bins below (1 for uniform bins)."""
        widths = [b - a for a, b in zip(self.edges[:-1], self.edges[1:-1])]
        if math.isinf(self.edges[-1]):
            growth = widths[-1] / widths[-2] if len(widths) >= 2 else 1.0
            widths.append(widths[-1] * growth)
        else:
            widths.append(self.edges[-1] - self.edges[-2])
        return tuple(widths)

    @cached_property
    def representatives(self) -> tuple[float, ...]:
        """The length each bin stands for: its midpoint (the reference's ``m_i``).

        An open top bin stands for its lower edge plus half its effective width:
        finite, and above everything the bin below can represent.
        """
        return tuple(lo + w / 2 for lo, w in zip(self.edges[:-1], self.widths))

    def index(self, length: float) -> int:
        """The bin a (remaining) length falls into; past the top, the top bin."""
        if length < 0 or math.isnan(length):
            raise ValueError(f"a length must be >= 0, got {length}")
        lo, hi = 0, self.count - 1
        while lo < hi:  # first bin whose upper edge is above length
            mid = (lo + hi) // 2
            if length < self.edges[mid + 1]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def rebin(self, probabilities, target: LengthBins):
        """A distribution over these bins as one over ``target``'s (mass spread evenly within
        each bin; an open top bin spans its effective width). What lies past ``target``'s
        last edge goes to its top bin, so the mass is kept."""
        import numpy as np

        source = np.asarray(probabilities, dtype=np.float64)
        if source.shape[-1] != self.count:
            raise ValueError(f"expected {self.count} probabilities, got {source.shape[-1]}")
        if target == self:
            return source.copy()
        lows = np.asarray(self.edges[:-1])
        highs = lows + np.asarray(self.widths)
        target_lows = np.asarray(target.edges[:-1])
        target_highs = np.asarray(target.edges[1:]).copy()
        target_highs[-1] = np.inf
        overlap = np.clip(np.minimum(highs[:, None], target_highs) - np.maximum(lows[:, None], target_lows), 0, None)
        share = overlap / (highs - lows)[:, None]  # [source bin, target bin]; each row sums to 1
        return source @ share

    def to_list(self) -> list[float | str]:
        """JSON-safe edges (``"inf"`` for an open top)."""
        return [("inf" if math.isinf(e) else e) for e in self.edges]

    @classmethod
    def from_list(cls, edges: list[float | str]) -> LengthBins:
        return cls(tuple(float(e) for e in edges))
