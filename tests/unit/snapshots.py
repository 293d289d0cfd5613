"""Example `Snapshot` values for tests (metrics, web, status). Pure builders, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable

from exporter.core.decisions import AbortReason, DiskDecision, DiskState, Plan
from exporter.core.holds import NO_HOLDS, Hold, HoldSet
from exporter.core.model import BlockJob, DiskKey, JobType
from exporter.core.space import SpaceCheck
from exporter.daemon.snapshot import Counters, Histogram, JobProgress, Snapshot
from exporter.metrics.renderer import render
from exporter.policy.values import Budget

MiB = 1024 * 1024
GiB = 1024 * MiB

# Histogram bounds a controller would plausibly use for reconcile durations (seconds).
RECONCILE_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


def decision(
    domain: str,
    disk: str = "vda",
    *,
    rule: str | None = "web",
    state: DiskState = DiskState.PENDING,
    depth: int = 1,
    failures: int = 0,
) -> DiskDecision:
    return DiskDecision(
        key=DiskKey(domain, disk),
        rule=rule,
        state=state,
        reason=f"{state} for the test",
        priority=0,
        depth=depth,
        consecutive_failures=failures,
        next_attempt_at=None,
    )


def job(
    domain: str,
    disk: str = "vda",
    *,
    cur: int = 1 * GiB,
    end: int = 4 * GiB,
    bandwidth: int | None = 50 * MiB,
    managed: bool = True,
    type: JobType = JobType.PULL,
) -> JobProgress:
    return JobProgress(
        key=DiskKey(domain, disk),
        job=BlockJob(type=type, cur=cur, end=end, bandwidth=bandwidth),
        rate=None,
        managed=managed,
    )


def histogram(observations: Iterable[float] = ()) -> Histogram:
    values = list(observations)
    counts = tuple(sum(1 for v in values if v <= bound) for bound in RECONCILE_BOUNDS)
    return Histogram(bounds=RECONCILE_BOUNDS, counts=counts, total=sum(values), count=len(values))


def plan(
    decisions: Iterable[DiskDecision] = (),
    *,
    bandwidth: int | None = 50 * MiB,
    max_concurrent: int = 2,
    open_windows: Iterable[str] = (),
    space: Iterable[SpaceCheck] = (),
) -> Plan:
    return Plan(
        actions=(),
        decisions=tuple(sorted(decisions, key=lambda d: d.key)),
        budget=Budget(bandwidth=bandwidth, max_concurrent=max_concurrent),
        open_windows=frozenset(open_windows),
        next_wake=None,
        space=tuple(space),
    )


def snapshot(
    plan: Plan | None = None,
    *,
    jobs: Iterable[JobProgress] = (),
    counters: Counters | None = None,
    backing_dependents: dict[str, int] | None = None,
    window_names: tuple[str, ...] = ("nights", "weekend"),
    rule_names: tuple[str, ...] = ("web", "databases"),
    libvirt_up: bool = True,
    policy_reload_ok: bool = True,
    policy_reload_success_at: float | None = 1_700_000_000.0,
    policy_error: str | None = None,
    reconcile_duration: Histogram | None = None,
    last_reconcile_success_at: float | None = 1_700_000_100.0,
    holds: HoldSet = NO_HOLDS,
) -> Snapshot:
    return Snapshot(
        taken_at=1_700_000_100.0,
        libvirt_up=libvirt_up,
        plan=plan,
        jobs=tuple(jobs),
        counters=counters or Counters(),
        backing_dependents=backing_dependents or {},
        window_names=window_names,
        rule_names=rule_names,
        policy_source="/etc/blockpull-exporter/policy.yml",
        policy_reload_ok=policy_reload_ok,
        policy_reload_success_at=policy_reload_success_at,
        policy_error=policy_error,
        reconcile_duration=reconcile_duration or histogram(),
        last_reconcile_success_at=last_reconcile_success_at,
        holds=holds,
    )


def realistic_snapshot() -> Snapshot:
    """A small host mid-way through a night: every kind of state, job and counter."""
    decisions = [
        decision("web-1", "vda", state=DiskState.PULLING, depth=2),
        decision("web-1", "vdb", state=DiskState.INDEPENDENT, depth=0),
        decision("web-2", "vda", state=DiskState.PENDING, depth=1),
        decision("web-3", "vda", state=DiskState.BACKOFF, depth=1, failures=2),
        decision("web-4", "vda", state=DiskState.GAVE_UP, depth=1, failures=5),
        decision("web-5", "vda", state=DiskState.NOT_RUNNING, depth=1),
        decision("web-6", "vda", state=DiskState.WAITING_SPACE, depth=1),
        decision("web-7", "vda", state=DiskState.HELD, depth=1),
        decision("db-1", "vda", rule="databases", state=DiskState.IGNORED, depth=1),
        decision("misc-1", "vda", rule=None, state=DiskState.INDEPENDENT, depth=1),
    ]
    counters = Counters(
        started={DiskKey("web-1", "vda"): 2, DiskKey("web-1", "vdb"): 1},
        completed={DiskKey("web-1", "vdb"): 1},
        failed={DiskKey("web-3", "vda"): 2},
        aborted={
            (DiskKey("web-1", "vda"), AbortReason.WINDOW_CLOSED): 1,
            (DiskKey("web-3", "vda"), AbortReason.DOMAIN_STOPPED): 1,
        },
    )
    images = SpaceCheck("/var/lib/libvirt/images", 500 * GiB, 60 * GiB, 50 * GiB, 5 * GiB)
    return snapshot(
        plan(
            decisions,
            bandwidth=400 * MiB,
            max_concurrent=4,
            open_windows={"nights"},
            space=[images],
        ),
        holds=HoldSet((Hold("web-7", 1_700_000_000.0, 1_700_003_600.0, "backup", "ops"),)),
        jobs=[
            job("web-1", "vda", cur=3 * GiB, end=8 * GiB, bandwidth=400 * MiB),
            job("other-1", "vdc", bandwidth=None, managed=False, type=JobType.COPY),
        ],
        counters=counters,
        backing_dependents={
            "/var/lib/libvirt/images/templates/os-base-12.qcow2": 6,
            '/var/lib/libvirt/images/odd "name"\\.qcow2': 1,
        },
        reconcile_duration=histogram([0.004, 0.02, 0.03, 0.2]),
    )


def large_snapshot(domains: int = 1000, disks_per_domain: int = 4) -> Snapshot:
    """The design's scale target: 1,000 domains and 4,000 disks, a few pulls running."""
    states = list(DiskState)
    decisions = []
    started: dict[DiskKey, int] = {}
    for d in range(domains):
        for k in range(disks_per_domain):
            name = f"web-{d:04d}"
            target = f"vd{chr(ord('a') + k)}"
            state = states[(d + k) % len(states)]
            rule = "databases" if state is DiskState.IGNORED else "web"
            decisions.append(decision(name, target, rule=rule, state=state, depth=1 + k % 3))
            if d % 7 == 0:
                started[DiskKey(name, target)] = 1 + d % 3
    jobs = [job(f"web-{d:04d}", "vda") for d in range(0, 8)]
    return snapshot(
        plan(decisions, bandwidth=400 * MiB, max_concurrent=8, open_windows={"nights"}),
        jobs=jobs,
        counters=Counters(started=started),
        backing_dependents={
            f"/var/lib/libvirt/images/templates/t{i}.qcow2": 40 for i in range(100)
        },
        reconcile_duration=histogram([0.05] * 100),
    )


def exported_metric_names() -> set[str]:
    """Sample names the daemon's renderer emits for a realistic snapshot."""
    text = render(realistic_snapshot(), "test").decode()
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
