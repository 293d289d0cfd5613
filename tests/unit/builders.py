"""Tiny builders for Policy, Observation and Memory values in tests.

Every argument has a sensible default, so a test names only what it is about:

    pol = policy(rule("web", domains=("web-*",), priority=10), max_concurrent=1)
    obs = observation(domain("web-1", disk("vda", chain=(BASE,))))
    mem = memory(failure(obs, "web-1", "vda", pol, count=2, at=NOW))

Values are built directly (no YAML), with the loader's defaults: bandwidth in bytes/s
(None = unlimited), durations in seconds, timezone UTC so `at("...")` and window times agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, time

from exporter.core.decisions import Action, SetSpeed, StartPull
from exporter.core.memory import Failures, Memory
from exporter.core.model import (
    BlockJob,
    ChainUsage,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    Inspection,
    JobType,
    Observation,
)
from exporter.policy.values import (
    Budget,
    Defaults,
    OutsideWindows,
    Policy,
    Retry,
    Rule,
    RuleAction,
    Window,
)

MiB = 1024**2
IMAGES = "/var/lib/libvirt/images"
BASE = f"{IMAGES}/templates/os-base.qcow2"
ALL_DAYS = frozenset(range(7))


class _Unset:
    """Marks a window that does not override the host bandwidth."""


UNSET = _Unset()


def at(text: str) -> datetime:
    """An aware UTC datetime from ISO text, e.g. at("2024-01-01T12:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rule(
    name: str = "all",
    *,
    domains: tuple[str, ...] = ("*",),
    disks: tuple[str, ...] = ("*",),
    backing: tuple[str, ...] = (),
    exclude_domains: tuple[str, ...] = (),
    exclude_disks: tuple[str, ...] = (),
    keep_base: str | None = None,
    windows: tuple[str, ...] = (),
    priority: int = 0,
    action: RuleAction = RuleAction.PULL,
) -> Rule:
    return Rule(
        name=name,
        domains=domains,
        disks=disks,
        backing=backing,
        exclude_domains=exclude_domains,
        exclude_disks=exclude_disks,
        keep_base=keep_base,
        windows=windows,
        priority=priority,
        action=action,
    )


def ignore(name: str = "ignored", **kwargs: object) -> Rule:
    return rule(name, action=RuleAction.IGNORE, **kwargs)  # type: ignore[arg-type]


def window(
    name: str,
    *,
    days: Iterable[int] = ALL_DAYS,
    start: str | None = None,
    end: str | None = None,
    bandwidth: int | _Unset | None = UNSET,
    max_concurrent: int | None = None,
) -> Window:
    """A weekly window; `start`/`end` as "HH:MM", None for the whole day."""
    overrides = not isinstance(bandwidth, _Unset)
    return Window(
        name=name,
        days=frozenset(days),
        start=time.fromisoformat(start) if start is not None else None,
        end=time.fromisoformat(end) if end is not None else None,
        overrides_bandwidth=overrides,
        bandwidth=None if isinstance(bandwidth, _Unset) else bandwidth,
        max_concurrent=max_concurrent,
    )


def policy(
    *rules: Rule,
    windows: Iterable[Window] = (),
    bandwidth: int | None = None,
    max_concurrent: int = 2,
    outside_windows: OutsideWindows = OutsideWindows.PAUSE,
    max_attempts: int = 5,
    backoff: float = 60.0,
    max_backoff: float = 3600.0,
    fingerprint: str = "policy-1",
    timezone: str | None = "UTC",
) -> Policy:
    """A policy with the given rules (one catch-all pull rule when none are given)."""
    return Policy(
        version=1,
        timezone=timezone,
        defaults=Defaults(
            budget=Budget(bandwidth=bandwidth, max_concurrent=max_concurrent),
            outside_windows=outside_windows,
            retry=Retry(max_attempts=max_attempts, backoff=backoff, max_backoff=max_backoff),
        ),
        windows=tuple(windows),
        rules=rules or (rule(),),
        source="<test>",
        fingerprint=fingerprint,
    )


def job(
    kind: JobType = JobType.PULL,
    *,
    bandwidth: int | None = None,
    cur: int = 0,
    end: int = 100 * MiB,
) -> BlockJob:
    return BlockJob(type=kind, cur=cur, end=end, bandwidth=bandwidth)


def disk(
    target: str = "vda",
    *,
    chain: tuple[str, ...] = (BASE,),
    source: str | None = "",
    job: BlockJob | None = None,
    readonly: bool = False,
    transient: bool = False,
    local_file: bool = False,
) -> Disk:
    """A disk backed by `chain`; source defaults to an overlay named after the target.
    `local_file`: its top is a local file, under the min_free guard."""
    return Disk(
        target=target,
        source=f"{IMAGES}/{target}.qcow2" if source == "" else source,
        chain=chain,
        readonly=readonly,
        transient=transient,
        job=job,
        local_file=local_file,
    )


def domain(name: str, *disks: Disk, state: DomainState = DomainState.RUNNING) -> Domain:
    """A domain with the given disks (one `vda` backed by BASE when none are given)."""
    return Domain(name=name, uuid=f"uuid-{name}", state=state, disks=disks or (disk(),))


def observation(*domains: Domain) -> Observation:
    """The domains, each read in full already (as the controller does before a start)."""
    return inspected(Observation(domains=domains))


def inspected(obs: Observation, usage: Mapping[DiskKey, ChainUsage] | None = None) -> Observation:
    """`obs` with every domain inspected: its jobs as observed, `usage` for the disks given."""
    found = {}
    for d in obs.domains:
        jobs = {k.target: k.job for k in d.disks if k.job is not None}
        keys = {k.target: DiskKey(d.name, k.target) for k in d.disks}
        known = {target: usage[key] for target, key in keys.items() if usage and key in usage}
        found[d.name] = Inspection(jobs, known)
    return obs.with_inspections(found)


def find_disk(obs: Observation, key: DiskKey) -> Disk:
    return obs.disks()[key][1]


def failure(
    obs: Observation,
    key: DiskKey,
    pol: Policy,
    *,
    count: int,
    at: datetime,
) -> tuple[DiskKey, Failures]:
    """A failure record valid for the disk as observed and the policy as given."""
    return key, Failures(
        count=count,
        last_failure_at=at.timestamp(),
        disk_fingerprint=find_disk(obs, key).fingerprint,
        policy_fingerprint=pol.fingerprint,
    )


def memory(*failures: tuple[DiskKey, Failures]) -> Memory:
    return Memory(failures=dict(failures))


def key(domain: str, disk: str = "vda") -> DiskKey:
    return DiskKey(domain, disk)


def apply(obs: Observation, actions: Iterable[Action]) -> Observation:
    """The host after a perfect host applied `actions` in order (pure; asserts they make sense).

    A start creates a pull job at the given speed (None = unlimited) that reports
    `cur == end == 0`, as libvirt does right after a start; a speed change
    replaces the job's bandwidth, an abort removes the job.
    """
    jobs = {key: d.job for key, (_, d) in obs.disks().items()}
    for action in actions:
        current = jobs[action.key]
        if isinstance(action, StartPull):
            assert current is None, f"start on busy disk {action.key}"
            jobs[action.key] = BlockJob(JobType.PULL, 0, 0, action.bandwidth)  # just started
        elif isinstance(action, SetSpeed):
            assert current is not None and current.type is JobType.PULL, action
            jobs[action.key] = replace(current, bandwidth=action.bandwidth)
        else:
            assert current is not None and current.type is JobType.PULL, action
            jobs[action.key] = None
    return replace(
        obs,
        domains=tuple(
            replace(
                dom,
                disks=tuple(replace(d, job=jobs[DiskKey(dom.name, d.target)]) for d in dom.disks),
            )
            for dom in obs.domains
        ),
    )
