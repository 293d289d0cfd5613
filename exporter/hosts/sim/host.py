"""The simulated host: `exporter.core.host.Host` over a simulated world, for unit tests,
property tests, benchmarks and the `sim://` demo.

The calls check what libvirt checks, in libvirt's order, and fail with its reasons; each is
counted by kind (`calls()`, including what an observe would cost in libvirt calls) and may take
the time a real call takes (`Latency`). The world under it (`exporter.hosts.sim.world`) holds
the domains, jobs, time and faults.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.core.clock import Clock
from exporter.core.host import EventSink, Sweep
from exporter.core.model import (
    BlockJob,
    ChainUsage,
    DiskKey,
    ErrorReason,
    FileSystem,
    HostError,
    Inspection,
    JobOutcome,
    JobType,
    Observation,
    Unmeasured,
)
from exporter.hosts.sim import state
from exporter.hosts.sim.records import DiskRecord, DomainRecord, GiB, JobRecord, job_rate
from exporter.hosts.sim.world import DEFAULT_EPOCH, SimWorld

CALL_KINDS: tuple[str, ...] = (
    "observe",
    "refresh_jobs",
    "refresh_jobs_keys",  # disks named in refresh_jobs calls
    "inspect",
    "sweep_jobs",
    "file_systems",
    "start_pull",
    "set_speed",
    "abort",
    "subscribe",
    "close",
    # what an observe costs in libvirt terms
    "list_domains",  # virConnectListAllDomains calls
    "domains_listed",
    "xml_reads",  # virDomainGetXMLDesc, one per domain
    "job_info_reads",  # virDomainGetBlockJobInfo, in observe and refresh_jobs
)


@dataclass(frozen=True)
class Latency:
    """Seconds a call to libvirt would take; `observe`/`refresh_jobs` sleep through them."""

    call: float = 0.0  # round trip of every host call
    domain_xml: float = 0.0  # per domain read by observe
    job_info: float = 0.0  # per blockJobInfo


NO_LATENCY = Latency()
# Measured on libvirt 9.0: live XML ~0.1 ms per domain, blockJobInfo ~0.12 ms.
LIBVIRT_9_LATENCY = Latency(call=0.0001, domain_xml=0.0001, job_info=0.00012)


class SimulatedHost(SimWorld):
    """`exporter.core.host.Host` in memory. See the module docstring."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        start: float = DEFAULT_EPOCH,
        device_speed: int = GiB,
        latency: Latency = NO_LATENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`clock`, `start`, `device_speed`: as SimWorld's. `sleep` is only called when
        `latency` is not zero."""
        super().__init__(clock=clock, start=start, device_speed=device_speed)
        self._latency = latency
        self._sleep = sleep
        self._calls: Counter[str] = Counter()

    # -- the Host protocol ------------------------------------------------------------------

    def observe(self) -> Observation:
        with self._op(mutating=False, call="observe"):
            domains = tuple(domain.view(self._now) for domain in self._domains.values())
            jobs = len(self._jobs)
            self._calls["list_domains"] += 1
            self._calls["domains_listed"] += len(domains)
            self._calls["xml_reads"] += len(domains)
            self._calls["job_info_reads"] += jobs
            file_systems = self._file_systems_locked()
        self._pause(
            self._latency.call
            + len(domains) * self._latency.domain_xml
            + jobs * (self._latency.job_info)
        )
        return Observation(domains, dict(file_systems))

    def sweep_jobs(self) -> Sweep:
        """observe() shows every job at once here: no sweep is ever needed."""
        with self._op(mutating=False, call="sweep_jobs"):
            return Sweep(found=False, next_in=None)

    def file_systems(self, directories: Iterable[str]) -> Mapping[str, FileSystem | Unmeasured]:
        with self._op(mutating=False, call="file_systems"):
            found = self._file_systems_locked()
            return {d: found.get(d) or Unmeasured(d, "not simulated") for d in directories}

    def inspect(self, domains: Iterable[str]) -> Mapping[str, Inspection]:
        wanted = list(domains)
        with self._op(mutating=False, call="inspect"):
            found: dict[str, Inspection] = {}
            for name in wanted:
                domain = self._domains.get(name)
                if domain is None:
                    continue
                disks = domain.disks
                found[name] = Inspection(
                    {t: d.job.view(self._now) for t, d in disks.items() if d.job is not None},
                    {t: ChainUsage(d.capacity, d.sizes, d.copied) for t, d in disks.items()},
                )
                self._calls["job_info_reads"] += len(disks)
        self._pause(self._latency.call + len(wanted) * self._latency.domain_xml)
        return found

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        wanted = list(keys)
        with self._op(mutating=False, call="refresh_jobs"):
            self._calls["refresh_jobs_keys"] += len(wanted)
            self._calls["job_info_reads"] += len(wanted)
            result: dict[DiskKey, BlockJob | None] = {}
            for key in wanted:
                job = self._jobs.get(key)
                result[key] = job.view(self._now) if job is not None else None
        self._pause(self._latency.call + len(wanted) * self._latency.job_info)
        return result

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        with self._op(mutating=True, call="start_pull"):
            injected = self._fail_next.pop(key, None)
            if injected is not None:
                raise injected
            domain, disk = self._active_disk_locked(key)
            if disk.job is not None:
                raise HostError(
                    ErrorReason.DISK_BUSY, f"disk '{key.disk}' already in active block job"
                )
            if disk.source is None:
                raise HostError(ErrorReason.OTHER, f"disk '{key.disk}' has no source")
            if disk.transient:
                raise HostError(
                    ErrorReason.OTHER,
                    f"block jobs are not supported on transient disk '{key.disk}'",
                )
            if disk.readonly:
                raise HostError(
                    ErrorReason.OTHER,
                    "unable to execute QEMU command 'block-stream': Block node is read-only",
                )
            _check_bandwidth(bandwidth)
            end = sum(disk.sizes[: disk.cut(base)])
            self._start_job_locked(domain, disk, key, JobType.PULL, bandwidth, end, base)
        self._pause(self._latency.call)

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        with self._op(mutating=True, call="set_speed"):
            _, disk = self._active_disk_locked(key)
            job = _require_job(disk, key)
            _check_bandwidth(bandwidth)
            self._reanchor_locked(job)
            job.bandwidth = bandwidth
            job.rate = job_rate(bandwidth, self._device_speed)
            self._schedule_locked(job)
        self._pause(self._latency.call)

    def abort(self, key: DiskKey) -> None:
        with self._op(mutating=True, call="abort"):
            _, disk = self._active_disk_locked(key)
            job = _require_job(disk, key)
            self._end_job_locked(job, completed=False, outcome=JobOutcome.CANCELED)
        self._pause(self._latency.call)

    def subscribe(self, sink: EventSink) -> None:
        with self._lock:
            self._calls["subscribe"] += 1
            self._sink = sink

    def close(self) -> None:
        """Forget the sink. The host stays usable: a later `subscribe` is a new connection."""
        with self._lock:
            self._calls["close"] += 1
            self._sink = None

    # -- inspection (free: no call counted, works while disconnected) -----------------------

    def calls(self) -> dict[str, int]:
        """A snapshot of the calls made so far, by kind (see CALL_KINDS)."""
        with self._lock:
            return {kind: self._calls[kind] for kind in CALL_KINDS}

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- state as plain JSON-able data (exporter.hosts.sim.state) ---------------------------

    def to_state(self) -> dict[str, Any]:
        with self._op(mutating=False):
            return state.encode(self._parts_locked())

    @classmethod
    def from_state(
        cls,
        document: Mapping[str, Any],
        *,
        clock: Clock | None = None,
        latency: Latency = NO_LATENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> SimulatedHost:
        """Rebuild a host from `to_state()`; an injected clock then catches up from its `now`."""
        parts = state.decode(document)
        host = cls(clock=clock, device_speed=parts.device_speed, latency=latency, sleep=sleep)
        with host._lock:
            host._install_locked(parts)
        return host

    # -- internals --------------------------------------------------------------------------

    def _host_call_locked(self, call: str) -> None:
        self._calls[call] += 1  # counted even when it fails
        super()._host_call_locked(call)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def _active_disk_locked(self, key: DiskKey) -> tuple[DomainRecord, DiskRecord]:
        # libvirt checks that the domain is active before it looks for the disk.
        domain = self._domain_locked(key.domain)
        if not domain.state.can_run_jobs:
            raise HostError(ErrorReason.DOMAIN_NOT_RUNNING, "domain is not running")
        return self._disk_locked(key)


def _check_bandwidth(bandwidth: int | None) -> None:
    if bandwidth is not None and bandwidth <= 0:
        raise HostError(ErrorReason.OTHER, "bandwidth must be positive (None = unlimited)")


def _require_job(disk: DiskRecord, key: DiskKey) -> JobRecord:
    if disk.job is None:
        raise HostError(ErrorReason.NO_JOB, f"disk '{key.disk}' does not have an active block job")
    return disk.job
