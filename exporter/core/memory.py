"""What the daemon remembers between reconciles and across restarts (the state file).

Pure values plus pure update functions; `exporter.daemon.state_store` persists them atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from exporter.core.model import DiskKey


@dataclass(frozen=True)
class Failures:
    """Consecutive failed attempts of one disk, valid while disk and policy stay the same."""

    count: int
    last_failure_at: float  # epoch seconds
    disk_fingerprint: str
    policy_fingerprint: str


@dataclass(frozen=True)
class TrackedJob:
    """A pull the daemon started or adopted, remembered until its outcome is proven."""

    base: str | None
    started_at: float  # epoch seconds
    chain_before: tuple[str, ...]  # the chain when it started; the outcome is judged against it
    growth: int | None = None  # the most it writes to its file system (min_free); None: unknown


def _counted(
    records: dict[DiskKey, Failures], key: DiskKey, now: float, disk_fp: str, policy_fp: str
) -> dict[DiskKey, Failures]:
    """`records` with one more for `key`; a record of another disk or policy starts over."""
    previous = records.get(key)
    count = 1
    if (
        previous
        and previous.disk_fingerprint == disk_fp
        and previous.policy_fingerprint == policy_fp
    ):
        count = previous.count + 1
    return {**records, key: Failures(count, now, disk_fp, policy_fp)}


@dataclass(frozen=True)
class Memory:
    failures: dict[DiskKey, Failures] = field(default_factory=dict)
    tracked: dict[DiskKey, TrackedJob] = field(default_factory=dict)
    # Consecutive pulls of the daemon's that someone else aborted: they back off like failures
    # (so a hand abort is respected), but never make a disk give up.
    interruptions: dict[DiskKey, Failures] = field(default_factory=dict)

    def with_failure(self, key: DiskKey, now: float, disk_fp: str, policy_fp: str) -> Memory:
        return replace(self, failures=_counted(self.failures, key, now, disk_fp, policy_fp))

    def with_interruption(self, key: DiskKey, now: float, disk_fp: str, policy_fp: str) -> Memory:
        interruptions = _counted(self.interruptions, key, now, disk_fp, policy_fp)
        return replace(self, interruptions=interruptions)

    def with_success(self, key: DiskKey) -> Memory:
        if key not in self.failures and key not in self.interruptions:
            return self
        return replace(
            self,
            failures={k: v for k, v in self.failures.items() if k != key},
            interruptions={k: v for k, v in self.interruptions.items() if k != key},
        )

    def only_domains(self, names: frozenset[str]) -> Memory:
        """Forget the failures and interruptions of domains that no longer exist (undefined or
        renamed); tracked pulls are settled by the controller, not dropped here."""
        failures = {k: v for k, v in self.failures.items() if k.domain in names}
        interruptions = {k: v for k, v in self.interruptions.items() if k.domain in names}
        if len(failures) == len(self.failures) and len(interruptions) == len(self.interruptions):
            return self
        return replace(self, failures=failures, interruptions=interruptions)

    def with_tracked(self, key: DiskKey, job: TrackedJob) -> Memory:
        return replace(self, tracked={**self.tracked, key: job})

    def without_tracked(self, key: DiskKey) -> Memory:
        return replace(self, tracked={k: v for k, v in self.tracked.items() if k != key})
