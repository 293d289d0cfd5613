"""What became of the daemon's pulls, counted once each per disk (the `_total` counters), and
the bytes they advanced (from cursor reads, never going back).

Mutable, owned by the controller; `freeze()` gives the immutable `Counters` a snapshot carries.
The series of a domain that no longer exists (undefined, renamed) are dropped at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Mapping

from exporter.core.decisions import AbortReason
from exporter.core.job_rate import bytes_advanced
from exporter.core.model import BlockJob, DiskKey
from exporter.daemon.snapshot import Counters


class OutcomeCounters:
    def __init__(self) -> None:
        self._started: Counter[DiskKey] = Counter()
        self._completed: Counter[DiskKey] = Counter()
        self._failed: Counter[DiskKey] = Counter()
        self._aborted: Counter[tuple[DiskKey, AbortReason]] = Counter()
        self._copied: Counter[DiskKey] = Counter()  # bytes the daemon's pulls advanced
        self._copy_cursor: dict[DiskKey, int] = {}  # the cursor `_copied` last counted to

    def started(self, key: DiskKey) -> None:
        self._started[key] += 1

    def completed(self, key: DiskKey, last: BlockJob | None) -> None:
        """`last`: the job as last read; the stretch after that read is copied too."""
        self._completed[key] += 1
        if last is not None and key in self._copy_cursor:
            self._copied[key] += max(last.end - self._copy_cursor[key], 0)

    def copied(self, jobs: Mapping[DiskKey, BlockJob], ours: Container[DiskKey]) -> None:
        """Add what the daemon's pulls (`ours`) advanced since the last read of `jobs`."""
        cursors: dict[DiskKey, int] = {}
        for key, job in jobs.items():
            if key in ours:
                self._copied[key] += bytes_advanced(self._copy_cursor.get(key), job.cur)
                cursors[key] = job.cur
        self._copy_cursor = cursors

    def failed(self, key: DiskKey) -> None:
        self._failed[key] += 1

    def aborted(self, key: DiskKey, reason: AbortReason) -> None:
        self._aborted[(key, reason)] += 1

    def keep_only_domains(self, names: frozenset[str]) -> None:
        for counter in (self._started, self._completed, self._failed, self._copied):
            for key in [k for k in counter if k.domain not in names]:
                del counter[key]
        for pair in [p for p in self._aborted if p[0].domain not in names]:
            del self._aborted[pair]

    def freeze(self) -> Counters:
        return Counters(
            started=dict(self._started),
            completed=dict(self._completed),
            copied=dict(self._copied),
            failed=dict(self._failed),
            aborted=dict(self._aborted),
        )
