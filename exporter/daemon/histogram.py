"""A tiny cumulative histogram the controller fills and freezes into each snapshot."""

from __future__ import annotations

import bisect
import math

from exporter.daemon.snapshot import Histogram

RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


class HistogramAccumulator:
    def __init__(self, bounds: tuple[float, ...] = RECONCILE_BUCKETS) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)  # per bucket, not yet cumulative
        self._total = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._total += value
        self._count += 1

    def freeze(self) -> Histogram:
        cumulative: list[int] = []
        running = 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return Histogram(self._bounds, tuple(cumulative), self._total, self._count)
