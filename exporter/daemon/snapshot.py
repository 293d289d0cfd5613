"""The immutable picture the controller publishes after every reconcile or progress refresh.

Readers (the /metrics endpoint, `status`) only ever see a whole snapshot; they never call
the host. Counters live here too, so a scrape is a pure function of one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.core.coordinator import CoordinationStatus
from exporter.core.decisions import AbortReason, Plan
from exporter.core.holds import NO_HOLDS, HoldSet
from exporter.core.model import BlockJob, DiskKey


@dataclass(frozen=True)
class JobProgress:
    key: DiskKey
    job: BlockJob
    rate: float | None  # bytes/s measured between the last two refreshes; None = unknown yet
    managed: bool  # started or adopted by the daemon (vs. a foreign job it leaves alone)


@dataclass(frozen=True)
class Counters:
    """Outcomes counted once each, per disk. Keys missing from a mapping count as zero."""

    started: dict[DiskKey, int] = field(default_factory=dict)
    completed: dict[DiskKey, int] = field(default_factory=dict)
    failed: dict[DiskKey, int] = field(default_factory=dict)
    aborted: dict[tuple[DiskKey, AbortReason], int] = field(default_factory=dict)
    copied: dict[DiskKey, int] = field(default_factory=dict)  # bytes the pulls advanced


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts, Prometheus style; the last bound is +Inf."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float
    count: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # epoch seconds
    libvirt_up: bool
    plan: Plan | None  # None until the first successful reconcile
    jobs: tuple[JobProgress, ...]
    counters: Counters
    backing_dependents: dict[str, int]  # image path -> disks whose chain includes it
    window_names: tuple[str, ...]  # every window of the policy, open or not
    rule_names: tuple[str, ...]
    policy_source: str
    policy_reload_ok: bool
    policy_reload_success_at: float | None
    policy_error: str | None  # the last reload's error, shown by `status` and the landing page
    reconcile_duration: Histogram
    last_reconcile_success_at: float | None
    state_saved: bool = True  # False while saving the state fails: no new pull starts then
    state_save_failures: int = 0  # failed saves since the daemon started
    holds: HoldSet = NO_HOLDS  # as last read from the holds file; `in_force(taken_at)` to show
    coordination: CoordinationStatus | None = None  # None: no coordinator (no shared groups)
