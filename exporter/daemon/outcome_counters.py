"""What became of the daemon's pulls, counted once each per disk (the `_total` counters).

Mutable, owned by the controller; `freeze()` gives the immutable `Counters` a snapshot carries.
The series of a domain that no longer exists (undefined, renamed) are dropped at once.
"""

from __future__ import annotations

from collections import Counter

from exporter.core.decisions import AbortReason
from exporter.core.model import DiskKey
from exporter.daemon.snapshot import Counters


class OutcomeCounters:
    def __init__(self) -> None:
        self._started: Counter[DiskKey] = Counter()
        self._completed: Counter[DiskKey] = Counter()
        self._failed: Counter[DiskKey] = Counter()
        self._aborted: Counter[tuple[DiskKey, AbortReason]] = Counter()

    def started(self, key: DiskKey) -> None:
        self._started[key] += 1

    def completed(self, key: DiskKey) -> None:
        self._completed[key] += 1

    def failed(self, key: DiskKey) -> None:
        self._failed[key] += 1

    def aborted(self, key: DiskKey, reason: AbortReason) -> None:
        self._aborted[(key, reason)] += 1

    def keep_only_domains(self, names: frozenset[str]) -> None:
        for counter in (self._started, self._completed, self._failed):
            for key in [k for k in counter if k.domain not in names]:
                del counter[key]
        for pair in [p for p in self._aborted if p[0].domain not in names]:
            del self._aborted[pair]

    def freeze(self) -> Counters:
        return Counters(
            started=dict(self._started),
            completed=dict(self._completed),
            failed=dict(self._failed),
            aborted=dict(self._aborted),
        )
