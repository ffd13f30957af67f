"""The daemon's own counters, kept beside the fold (ingest latency)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

INGEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Histogram:
    """A cumulative histogram of seconds, as Prometheus wants it."""

    buckets: tuple[float, ...] = INGEST_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        i = bisect.bisect_left(self.buckets, seconds)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += seconds
        self.count += 1
