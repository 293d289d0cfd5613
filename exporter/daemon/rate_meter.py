"""The measured rate of each running block job, from its cursor between two reads.

Mutable, owned by the controller. The earlier read is kept until a second has passed, so that
reads in quick succession do not measure noise; a job that is gone is forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping

from exporter.core.job_rate import CursorSample, rate_between
from exporter.core.model import BlockJob, DiskKey

MIN_SPAN_SECONDS = 1.0


class RateMeter:
    def __init__(self) -> None:
        self._rates: dict[DiskKey, float] = {}
        self._samples: dict[DiskKey, CursorSample] = {}

    def measure(self, jobs: Mapping[DiskKey, BlockJob], now: float) -> None:
        """Take the jobs as read at monotonic `now`."""
        rates: dict[DiskKey, float] = {}
        samples: dict[DiskKey, CursorSample] = {}
        for key, job in jobs.items():
            sample = CursorSample(job.cur, now)
            previous = self._samples.get(key)
            rate = rate_between(previous, sample) if previous is not None else None
            if previous is not None and rate is not None:
                rates[key] = rate
                samples[key] = sample if now - previous.at >= MIN_SPAN_SECONDS else previous
            else:
                samples[key] = sample
                if key in self._rates:
                    rates[key] = self._rates[key]
        self._rates, self._samples = rates, samples

    def rate(self, key: DiskKey) -> float | None:
        """Bytes/s; None until two reads a moment apart."""
        return self._rates.get(key)
