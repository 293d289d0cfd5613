"""An in-memory libvirt host for unit tests, property tests, benchmarks and the `sim://` demo.

Domains, disks, backing chains and block jobs that progress with simulated time, plus the
faults real hosts show: failed jobs, destroyed domains, a dropped libvirtd connection, jobs
started by hand, pulls that finish unannounced. Where the daemon could tell the difference it
behaves like libvirt 9.0 with QEMU (DESIGN.md, "Units" and "Events are hints"):

- a pull started right now reports `cur == end == 0` until time moves on;
- a pull re-started after an abort skips what is already in the overlay: its cursor jumps over
  those bytes at once (QEMU counts skipped clusters as progress) and only the rest takes time;
- a domain destroyed mid-pull emits lifecycle events only, never a block-job event;
- events raised while the connection is down are lost; jobs keep running in QEMU meanwhile.

Time is either owned by the host (the default: `advance()` moves it, and `host.clock` is an
`exporter.core.clock.Clock` whose `wait` advances it, stopping at the instant an event arrives) or
followed from an injected `Clock` (every call first catches up to `clock.time()`).

Events are queued under the host's lock and handed to the sink after it is released, so a sink
may call the host back; a sink must not block on another thread that is calling the host.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from exporter.core.clock import Clock
from exporter.core.host import EventSink, Sweep
from exporter.core.model import (
    BlockJob,
    ChainUsage,
    ConnectionEvent,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    ErrorReason,
    HostError,
    HostEvent,
    Inspection,
    JobEvent,
    JobOutcome,
    JobType,
    LifecycleEvent,
    Observation,
)

T = TypeVar("T")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

STATE_VERSION = 1
DEFAULT_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z, as exporter.core.clock.ManualClock

# Jobs that mirror: at `end` they turn READY and keep running until pivoted or aborted.
_MIRROR_TYPES = frozenset({JobType.COPY, JobType.ACTIVE_COMMIT})

CALL_KINDS: tuple[str, ...] = (
    "observe",
    "refresh_jobs",
    "refresh_jobs_keys",  # disks named in refresh_jobs calls
    "inspect",
    "sweep_jobs",
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
class SimDisk:
    """A disk to add to a simulated domain.

    `size` is the data each backing image holds, i.e. what a pull copies out of it: one int for
    every image of the chain, or one per image, nearest first.
    """

    target: str
    source: str | None
    chain: tuple[str, ...] = ()
    size: int | tuple[int, ...] = GiB
    readonly: bool = False
    transient: bool = False

    def sizes(self) -> tuple[int, ...]:
        chain = tuple(self.chain)
        if isinstance(self.size, int):
            sizes = (self.size,) * len(chain)
        else:
            sizes = tuple(self.size)
            if len(sizes) != len(chain):
                raise ValueError(f"{self.target}: {len(sizes)} sizes for {len(chain)} images")
        if any(size < 0 for size in sizes):
            raise ValueError(f"{self.target}: image sizes must not be negative")
        return sizes


@dataclass(frozen=True)
class Latency:
    """Seconds a call to libvirt would take; `observe`/`refresh_jobs` sleep through them."""

    call: float = 0.0  # round trip of every host call
    domain_xml: float = 0.0  # per domain read by observe
    job_info: float = 0.0  # per blockJobInfo


NO_LATENCY = Latency()
# Measured on libvirt 9.0 (DESIGN.md): live XML ~0.1 ms per domain, blockJobInfo ~0.12 ms.
LIBVIRT_9_LATENCY = Latency(call=0.0001, domain_xml=0.0001, job_info=0.00012)


@dataclass
class _Job:
    """A running block job. Progress is linear from `anchor`, so nothing ticks per step."""

    key: DiskKey
    type: JobType
    bandwidth: int  # as set by the caller; 0 = unlimited
    end: int
    base: str | None  # pulls: the image kept (None = full pull)
    started_at: float
    skipped: float  # bytes counted as done at start without copying (already in the overlay)
    done: float  # bytes done at `anchor`
    anchor: float
    rate: float  # bytes/s actually achieved
    ready: bool = False  # mirror jobs: reached `end`, waiting for pivot or abort
    version: int = 0  # bumps on every reschedule; stale heap entries carry an older one

    def done_at(self, now: float) -> float:
        if self.ready:
            return float(self.end)
        return min(float(self.end), self.done + self.rate * max(0.0, now - self.anchor))

    def finish_time(self) -> float:
        return self.anchor + (self.end - self.done) / self.rate

    def view(self, now: float) -> BlockJob:
        if now <= self.started_at:  # libvirt/QEMU report 0/0 before the job got going
            return BlockJob(self.type, 0, 0, self.bandwidth)
        return BlockJob(self.type, int(self.done_at(now)), self.end, self.bandwidth)


@dataclass
class _DiskState:
    target: str
    source: str | None
    chain: tuple[str, ...]
    sizes: tuple[int, ...]
    readonly: bool
    transient: bool
    copied: int = 0  # bytes of the backing data already in the overlay (from interrupted pulls)
    job: _Job | None = None
    value: Disk | None = None  # cached view without job

    @property
    def capacity(self) -> int:
        """The virtual size: as big as all its data together, at least."""
        return max(sum(self.sizes), GiB)

    def view(self) -> Disk:
        if self.value is None:
            self.value = Disk(self.target, self.source, self.chain, self.readonly, self.transient)
        return self.value


@dataclass
class _DomainState:
    name: str
    uuid: str
    state: DomainState
    disks: dict[str, _DiskState]
    jobs: int = 0
    value: Domain | None = None  # cached view, valid while no job runs and nothing changes

    def view(self, now: float) -> Domain:
        if self.jobs == 0:
            if self.value is None:
                disks = tuple(disk.view() for disk in self.disks.values())
                self.value = Domain(self.name, self.uuid, self.state, disks)
            return self.value
        disks = tuple(
            disk.view() if disk.job is None else _with_job(disk.view(), disk.job.view(now))
            for disk in self.disks.values()
        )
        return Domain(self.name, self.uuid, self.state, disks)


def _with_job(disk: Disk, job: BlockJob) -> Disk:
    return replace(disk, job=job)


class SimClock:
    """An `exporter.core.clock.Clock` driven by a SimulatedHost that owns its time.

    `wait` advances the host until an item arrives in the inbox (e.g. the host's own event,
    delivered at the instant it happens) or the timeout has passed; it never sleeps.
    """

    def __init__(self, host: SimulatedHost) -> None:
        self._host = host

    def time(self) -> float:
        return self._host.now()

    def monotonic(self) -> float:
        return self._host.now()

    def advance(self, seconds: float) -> None:
        self._host.advance(seconds)

    def wait(self, inbox: queue.SimpleQueue[T], timeout: float) -> T | None:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            pass
        self._host.advance(max(0.0, timeout), stop=lambda: not inbox.empty())
        try:
            return inbox.get_nowait()
        except queue.Empty:
            return None


class SimulatedHost:
    """`exporter.core.host.Host` in memory. See the module docstring for the model."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        start: float = DEFAULT_EPOCH,
        device_speed: int = GiB,
        latency: Latency = NO_LATENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`clock`: follow this clock's `time()`; None: own the time, starting at `start`.

        `device_speed` (bytes/s) caps every job, so it is the speed of an unlimited one.
        `sleep` is only called when `latency` is not zero.
        """
        if device_speed <= 0:
            raise ValueError("device_speed must be positive")
        self._external = clock
        self._now = float(clock.time() if clock is not None else start)
        self._device_speed = device_speed
        self._latency = latency
        self._sleep = sleep
        self._lock = threading.RLock()
        self._sink: EventSink | None = None
        self._pending: list[HostEvent] = []
        self._calls: Counter[str] = Counter()
        self._reset_world()

    def _reset_world(self) -> None:
        self._domains: dict[str, _DomainState] = {}
        self._jobs: dict[DiskKey, _Job] = {}
        self._heap: list[tuple[float, int, DiskKey, int]] = []  # finish, tie-break, key, version
        self._seq = 0
        self._connected = True
        self._fail_next: dict[DiskKey, HostError] = {}
        self._copied_total = 0.0  # bytes copied by jobs that have ended

    # -- time -------------------------------------------------------------------------------

    @property
    def clock(self) -> SimClock:
        """A Clock for the controller under test, driven by this host's time."""
        if self._external is not None:
            raise ValueError("this host follows an injected clock; use that one")
        return SimClock(self)

    def now(self) -> float:
        """Simulated epoch seconds (after catching up with an injected clock)."""
        with self._op(mutating=False):
            return self._now

    def advance(self, seconds: float, stop: Callable[[], bool] | None = None) -> None:
        """Move time forward; jobs end at their exact instant, each event delivered then.

        A sink that starts a pull when told of a completion gets the rest of the interval.
        `stop`, checked after each delivered event, ends the advance early (at that instant).
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        target: float | None = None
        while True:
            with self._op(mutating=True):
                if target is None:
                    target = self._now + seconds
                finished = self._step_locked(target)
            if finished or (stop is not None and stop()):
                return

    def _step_locked(self, target: float) -> bool:
        """End the next job due by `target`, or move time to `target`. True when there."""
        while self._heap:
            finish, _, key, version = self._heap[0]
            job = self._jobs.get(key)
            if job is None or job.version != version or job.ready:
                heapq.heappop(self._heap)
                continue
            # A job with nothing to copy still needs time to move on at all to finish.
            if finish <= target and target > job.started_at:
                heapq.heappop(self._heap)
                self._now = max(self._now, finish)
                self._reach_end_locked(job)
                return False
            break
        self._now = max(self._now, target)
        return True

    def _catch_up_locked(self) -> None:
        if self._external is not None:
            target = self._external.time()
            while not self._step_locked(target):
                pass

    # -- the Host protocol ------------------------------------------------------------------

    def observe(self) -> Observation:
        with self._op(mutating=False, call="observe"):
            domains = tuple(domain.view(self._now) for domain in self._domains.values())
            jobs = len(self._jobs)
            self._calls["list_domains"] += 1
            self._calls["domains_listed"] += len(domains)
            self._calls["xml_reads"] += len(domains)
            self._calls["job_info_reads"] += jobs
        self._pause(
            self._latency.call
            + len(domains) * self._latency.domain_xml
            + jobs * (self._latency.job_info)
        )
        return Observation(domains)

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

    def sweep_jobs(self) -> Sweep:
        """observe() shows every job at once here: no sweep is ever needed."""
        with self._op(mutating=False, call="sweep_jobs"):
            return Sweep(found=False, next_in=None)

    def inspect(self, domains: Iterable[str]) -> Mapping[str, Inspection]:
        wanted = list(domains)
        with self._op(mutating=False, call="inspect"):
            found: dict[str, Inspection] = {}
            for name in wanted:
                domain = self._domains.get(name)
                if domain is None:
                    continue
                found[name] = Inspection(
                    {t: d.job.view(self._now) for t, d in domain.disks.items() if d.job},
                    {t: ChainUsage(d.capacity, d.sizes) for t, d in domain.disks.items()},
                )
                self._calls["job_info_reads"] += len(domain.disks)
        self._pause(self._latency.call * (1 + len(wanted)))
        return found

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
            speed = _bandwidth(bandwidth)
            cut = _cut(disk, base)
            end = sum(disk.sizes[:cut])
            self._start_job_locked(domain, disk, key, JobType.PULL, speed, end, base)
        self._pause(self._latency.call)

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        with self._op(mutating=True, call="set_speed"):
            _, disk = self._active_disk_locked(key)
            job = _require_job(disk, key)
            speed = _bandwidth(bandwidth)
            self._reanchor_locked(job)
            job.bandwidth = speed
            job.rate = self._rate(speed)
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

    # -- building ---------------------------------------------------------------------------

    def add_domain(
        self,
        name: str,
        disks: Sequence[SimDisk] = (),
        *,
        state: DomainState = DomainState.RUNNING,
        uuid: str | None = None,
    ) -> tuple[DiskKey, ...]:
        """Define a domain; returns its disks' keys. The uuid is derived from the name."""
        with self._op(mutating=True):
            if name in self._domains:
                raise ValueError(f"domain {name!r} already exists")
            domain = _DomainState(
                name, uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name)), state, {}
            )
            for disk in disks:
                _add_disk(domain, disk)
            self._domains[name] = domain
            self._emit(LifecycleEvent(name, "defined"))
            if state.can_run_jobs:
                self._emit(LifecycleEvent(name, "started"))
            return tuple(DiskKey(name, target) for target in domain.disks)

    def set_chain(
        self,
        key: DiskKey,
        chain: Sequence[str],
        *,
        size: int | tuple[int, ...] = GiB,
        source: str | None = None,
    ) -> None:
        """Replace the disk's images (a new chain means nothing is copied yet).

        `source` None keeps the current top image.
        """
        with self._op(mutating=True):
            domain, disk = self._disk_locked(key)
            if disk.job is not None:
                raise ValueError(f"{key}: a block job runs on it")
            spec = SimDisk(key.disk, source or disk.source, tuple(chain), size)
            disk.chain, disk.sizes, disk.source = spec.chain, spec.sizes(), spec.source
            disk.copied = 0
            disk.value = domain.value = None

    def set_device_speed(self, bytes_per_second: int) -> None:
        if bytes_per_second <= 0:
            raise ValueError("device speed must be positive")
        with self._op(mutating=True):
            self._device_speed = bytes_per_second
            for job in self._jobs.values():
                if not job.ready:
                    self._reanchor_locked(job)
                    job.rate = self._rate(job.bandwidth)
                    self._schedule_locked(job)

    # -- faults -----------------------------------------------------------------------------

    def fail_job(self, key: DiskKey) -> None:
        """The job dies (e.g. its backing store went away): FAILED event, chain unchanged."""
        with self._op(mutating=True):
            job = self._job_locked(key)
            self._end_job_locked(job, completed=False, outcome=JobOutcome.FAILED)

    def fail_next_start(
        self, key: DiskKey, reason: ErrorReason = ErrorReason.OTHER, message: str = ""
    ) -> None:
        """The next `start_pull` of this disk raises HostError(reason), once."""
        with self._op(mutating=True):
            self._fail_next[key] = HostError(reason, message or "injected failure")

    def destroy_domain(self, name: str) -> None:
        """Like `virsh destroy`: SHUTOFF, jobs vanish without a block-job event."""
        self._stop(name)

    def shutdown_domain(self, name: str) -> None:
        """Like `virsh shutdown` once the guest is down: same as far as jobs are concerned."""
        self._stop(name)

    def _stop(self, name: str) -> None:
        with self._op(mutating=True):
            domain = self._domain_locked(name)
            if not domain.state.can_run_jobs:
                raise ValueError(f"domain {name!r} is not running")
            self._stop_locked(domain)

    def _stop_locked(self, domain: _DomainState) -> None:
        for disk in domain.disks.values():
            if disk.job is not None:
                self._end_job_locked(disk.job, completed=False, outcome=None)
        domain.state = DomainState.SHUTOFF
        domain.value = None
        self._emit(LifecycleEvent(domain.name, "stopped"))

    def start_domain(self, name: str, *, paused: bool = False) -> None:
        with self._op(mutating=True):
            domain = self._domain_locked(name)
            if domain.state.can_run_jobs:
                raise ValueError(f"domain {name!r} is already running")
            domain.state = DomainState.PAUSED if paused else DomainState.RUNNING
            domain.value = None
            self._emit(LifecycleEvent(name, "started"))

    def pause_domain(self, name: str) -> None:
        """Suspend the vCPUs; block jobs keep running."""
        with self._op(mutating=True):
            domain = self._domain_locked(name)
            if not domain.state.can_run_jobs:
                raise ValueError(f"domain {name!r} is not running")
            domain.state = DomainState.PAUSED
            domain.value = None
            self._emit(LifecycleEvent(name, "suspended"))

    def remove_domain(self, name: str) -> None:
        """Destroy (if running) and undefine: the domain is gone from the next observe."""
        with self._op(mutating=True):
            domain = self._domain_locked(name)
            if domain.state.can_run_jobs:
                self._stop_locked(domain)
            del self._domains[name]
            self._emit(LifecycleEvent(name, "undefined"))

    def drop_connection(self, reason: str = "libvirtd went away") -> None:
        """Every host call raises HostError(CONNECTION) until restored; QEMU keeps going."""
        with self._op(mutating=True):
            if self._connected:
                self._emit(ConnectionEvent(up=False, reason=reason))
                self._connected = False

    def restore_connection(self) -> None:
        with self._op(mutating=True):
            if not self._connected:
                self._connected = True
                self._emit(ConnectionEvent(up=True))

    def add_foreign_job(
        self,
        key: DiskKey,
        type: JobType = JobType.PULL,
        bandwidth: int = 0,
        *,
        base: str | None = None,
        end: int | None = None,
    ) -> None:
        """A job the daemon did not start (e.g. `virsh blockpull` by hand).

        A pull behaves like any pull. COPY and ACTIVE_COMMIT turn READY at `end` and stay;
        other types complete at `end` leaving the chain alone. `end` defaults to the bytes a
        pull down to `base` would copy.
        """
        with self._op(mutating=True):
            domain, disk = self._disk_locked(key)
            if not domain.state.can_run_jobs:
                raise ValueError(f"domain {key.domain!r} is not running")
            if disk.job is not None:
                raise ValueError(f"{key}: a block job runs on it already")
            cut = _cut(disk, base)
            size = sum(disk.sizes[:cut]) if end is None else end
            self._start_job_locked(domain, disk, key, type, _bandwidth(bandwidth), size, base)

    def complete_silently(self, key: DiskKey) -> None:
        """The pull finishes now without any event, as when libvirtd was down meanwhile."""
        with self._op(mutating=True):
            job = self._job_locked(key)
            if job.type is not JobType.PULL:
                raise ValueError(f"{key}: only a pull can complete silently")
            self._end_job_locked(job, completed=True, outcome=None)

    # -- inspection (free: no call counted, works while disconnected) -----------------------

    def calls(self) -> dict[str, int]:
        """A snapshot of the calls made so far, by kind (see CALL_KINDS)."""
        with self._lock:
            return {kind: self._calls[kind] for kind in CALL_KINDS}

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def running_jobs(self) -> dict[DiskKey, BlockJob]:
        with self._op(mutating=False):
            return {key: job.view(self._now) for key, job in sorted(self._jobs.items())}

    def job(self, key: DiskKey) -> BlockJob | None:
        with self._op(mutating=False):
            job = self._jobs.get(key)
            return job.view(self._now) if job is not None else None

    def disk(self, key: DiskKey) -> Disk:
        with self._op(mutating=False):
            _, disk = self._disk_locked(key)
            return (
                disk.view()
                if disk.job is None
                else _with_job(disk.view(), disk.job.view(self._now))
            )

    def chain(self, key: DiskKey) -> tuple[str, ...]:
        return self.disk(key).chain

    def domain_state(self, name: str) -> DomainState:
        with self._op(mutating=False):
            return self._domain_locked(name).state

    def copied(self, key: DiskKey) -> int:
        """Bytes of backing data already in the overlay from interrupted pulls."""
        with self._op(mutating=False):
            return self._disk_locked(key)[1].copied

    def bytes_copied_total(self) -> int:
        """Bytes all jobs have really copied so far (skipped clusters do not count)."""
        with self._op(mutating=False):
            running = sum(job.done_at(self._now) - job.skipped for job in self._jobs.values())
            return int(self._copied_total + running)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def device_speed(self) -> int:
        with self._lock:
            return self._device_speed

    # -- state as plain JSON-able data (used by exporter.hosts.sim.state_file) --

    def to_state(self) -> dict[str, Any]:
        with self._op(mutating=False):
            return self._state_locked()

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        *,
        clock: Clock | None = None,
        latency: Latency = NO_LATENCY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> SimulatedHost:
        """Rebuild a host from `to_state()`; an injected clock then catches up from its `now`."""
        host = cls(
            clock=clock, device_speed=int(state["device_speed"]), latency=latency, sleep=sleep
        )
        with host._lock:
            host._restore_locked(state)
        return host

    def _state_locked(self) -> dict[str, Any]:
        now = self._now
        return {
            "version": STATE_VERSION,
            "now": now,
            "device_speed": self._device_speed,
            "connected": self._connected,
            "copied_total": self._copied_total,
            "domains": [
                {
                    "name": d.name,
                    "uuid": d.uuid,
                    "state": d.state.value,
                    "disks": [
                        {
                            "target": k.target,
                            "source": k.source,
                            "chain": list(k.chain),
                            "sizes": list(k.sizes),
                            "readonly": k.readonly,
                            "transient": k.transient,
                            "copied": k.copied,
                        }
                        for k in d.disks.values()
                    ],
                }
                for d in self._domains.values()
            ],
            "jobs": [
                {
                    "domain": j.key.domain,
                    "disk": j.key.disk,
                    "type": j.type.value,
                    "bandwidth": j.bandwidth,
                    "end": j.end,
                    "base": j.base,
                    "started_at": j.started_at,
                    "skipped": j.skipped,
                    "done": j.done_at(now),
                    "ready": j.ready,
                }
                for j in self._jobs.values()
            ],
            "fail_next_start": [
                {"domain": k.domain, "disk": k.disk, "reason": e.reason.value, "message": e.message}
                for k, e in self._fail_next.items()
            ],
        }

    def _restore_locked(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"simulated host state version {state.get('version')!r} is not {STATE_VERSION}"
            )
        self._reset_world()
        self._now = float(state["now"])
        self._device_speed = int(state["device_speed"])
        self._connected = bool(state["connected"])
        self._copied_total = float(state["copied_total"])
        for d in state["domains"]:
            domain = _DomainState(str(d["name"]), str(d["uuid"]), DomainState(d["state"]), {})
            for k in d["disks"]:
                spec = SimDisk(
                    k["target"],
                    k["source"],
                    tuple(k["chain"]),
                    tuple(int(s) for s in k["sizes"]),
                    bool(k["readonly"]),
                    bool(k["transient"]),
                )
                _add_disk(domain, spec)
                domain.disks[spec.target].copied = int(k["copied"])
            self._domains[domain.name] = domain
        for j in state["jobs"]:
            key = DiskKey(j["domain"], j["disk"])
            domain, disk = self._disk_locked(key)
            speed = int(j["bandwidth"])
            job = _Job(
                key=key,
                type=JobType(j["type"]),
                bandwidth=speed,
                end=int(j["end"]),
                base=j["base"],
                started_at=float(j["started_at"]),
                skipped=float(j["skipped"]),
                done=float(j["done"]),
                anchor=self._now,
                rate=self._rate(speed),
                ready=bool(j["ready"]),
            )
            self._attach_job_locked(domain, disk, job)
        for f in state["fail_next_start"]:
            key = DiskKey(f["domain"], f["disk"])
            self._fail_next[key] = HostError(ErrorReason(f["reason"]), str(f["message"]))

    # -- internals --------------------------------------------------------------------------

    def _op(self, *, mutating: bool, call: str | None = None) -> _Operation:
        """One operation: under the lock, caught up with the clock; events delivered after.

        `call` names a Host protocol call: it is counted and fails while disconnected.
        """
        return _Operation(self, mutating, call)

    def _begin_persistence(self, mutating: bool) -> None:
        """Hook for a host whose state lives elsewhere (sim.state_file): lock and load."""

    def _end_persistence(self, mutating: bool) -> None:
        """Hook: save (when `mutating`) and unlock. Runs whenever the begin hook succeeded."""

    def _flush(self) -> None:
        with self._lock:
            events, self._pending = self._pending, []
            sink = self._sink
        if sink is not None:
            for event in events:
                sink(event)

    def _emit(self, event: HostEvent) -> None:
        # Events raised while disconnected or unsubscribed are lost, as with libvirt.
        if self._connected and self._sink is not None:
            self._pending.append(event)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def _rate(self, bandwidth: int) -> float:
        return float(min(bandwidth, self._device_speed) if bandwidth > 0 else self._device_speed)

    def _domain_locked(self, name: str) -> _DomainState:
        domain = self._domains.get(name)
        if domain is None:
            raise HostError(ErrorReason.DOMAIN_NOT_FOUND, f"no domain with matching name '{name}'")
        return domain

    def _disk_locked(self, key: DiskKey) -> tuple[_DomainState, _DiskState]:
        domain = self._domain_locked(key.domain)
        disk = domain.disks.get(key.disk)
        if disk is None:
            raise HostError(ErrorReason.DISK_NOT_FOUND, f"disk '{key.disk}' not found in domain")
        return domain, disk

    def _active_disk_locked(self, key: DiskKey) -> tuple[_DomainState, _DiskState]:
        # libvirt checks that the domain is active before it looks for the disk.
        domain = self._domain_locked(key.domain)
        if not domain.state.can_run_jobs:
            raise HostError(ErrorReason.DOMAIN_NOT_RUNNING, "domain is not running")
        return self._disk_locked(key)

    def _job_locked(self, key: DiskKey) -> _Job:
        job = self._jobs.get(key)
        if job is None:
            raise ValueError(f"{key}: no block job runs on it")
        return job

    def _start_job_locked(
        self,
        domain: _DomainState,
        disk: _DiskState,
        key: DiskKey,
        type: JobType,
        bandwidth: int,
        end: int,
        base: str | None,
    ) -> None:
        # Clusters already in the overlay are skipped at once; only the rest takes time.
        skipped = float(min(disk.copied, end)) if type is JobType.PULL else 0.0
        job = _Job(
            key=key,
            type=type,
            bandwidth=bandwidth,
            end=end,
            base=base,
            started_at=self._now,
            skipped=skipped,
            done=skipped,
            anchor=self._now,
            rate=self._rate(bandwidth),
        )
        self._attach_job_locked(domain, disk, job)

    def _attach_job_locked(self, domain: _DomainState, disk: _DiskState, job: _Job) -> None:
        disk.job = job
        domain.jobs += 1
        domain.value = None
        self._jobs[job.key] = job
        if not job.ready:
            self._schedule_locked(job)

    def _reanchor_locked(self, job: _Job) -> None:
        job.done = job.done_at(self._now)
        job.anchor = self._now

    def _schedule_locked(self, job: _Job) -> None:
        job.version += 1
        self._seq += 1
        heapq.heappush(self._heap, (job.finish_time(), self._seq, job.key, job.version))
        if len(self._heap) > 2 * len(self._jobs) + 64:  # many speed changes: drop stale entries
            self._heap = [
                entry
                for entry in self._heap
                if (live := self._jobs.get(entry[2])) is not None and live.version == entry[3]
            ]
            heapq.heapify(self._heap)

    def _reach_end_locked(self, job: _Job) -> None:
        if job.type in _MIRROR_TYPES:
            job.done, job.anchor, job.ready = float(job.end), self._now, True
            self._emit(JobEvent(job.key, job.type, JobOutcome.READY))
        else:
            self._end_job_locked(job, completed=True, outcome=JobOutcome.COMPLETED)

    def _end_job_locked(self, job: _Job, *, completed: bool, outcome: JobOutcome | None) -> None:
        done = float(job.end) if completed else job.done_at(self._now)
        self._copied_total += done - job.skipped
        domain = self._domains[job.key.domain]
        disk = domain.disks[job.key.disk]
        disk.job = None
        domain.jobs -= 1
        domain.value = None
        del self._jobs[job.key]
        if job.type is JobType.PULL:
            if completed:
                cut = _cut(disk, job.base) if job.base in disk.chain else len(disk.chain)
                disk.chain, disk.sizes = disk.chain[cut:], disk.sizes[cut:]
                disk.copied = 0
                disk.value = None
            else:  # what was copied stays in the overlay
                disk.copied = max(disk.copied, int(done))
        if outcome is not None:
            self._emit(JobEvent(job.key, job.type, outcome))


class _Operation:
    """The context manager behind `SimulatedHost._op`.

    A class, not @contextmanager: contextlib assigns `__traceback__` to exceptions passing
    through a generator, which a frozen-dataclass exception such as HostError refuses.
    """

    __slots__ = ("call", "host", "mutating")

    def __init__(self, host: SimulatedHost, mutating: bool, call: str | None) -> None:
        self.host, self.mutating, self.call = host, mutating, call

    def __enter__(self) -> None:
        host = self.host
        host._lock.acquire()
        try:
            host._begin_persistence(self.mutating)
            try:
                host._catch_up_locked()
                if self.call is not None:
                    host._calls[self.call] += 1
                    if not host._connected:
                        raise HostError(ErrorReason.CONNECTION, "cannot reach libvirtd")
            except BaseException:
                host._end_persistence(self.mutating)
                raise
        except BaseException:
            host._lock.release()
            host._flush()
            raise

    def __exit__(self, *exc_info: object) -> None:
        host = self.host
        try:
            host._end_persistence(self.mutating)
        finally:
            host._lock.release()
            host._flush()


def _add_disk(domain: _DomainState, disk: SimDisk) -> None:
    if disk.target in domain.disks:
        raise ValueError(f"domain {domain.name!r} already has a disk {disk.target!r}")
    domain.disks[disk.target] = _DiskState(
        disk.target, disk.source, tuple(disk.chain), disk.sizes(), disk.readonly, disk.transient
    )


def _cut(disk: _DiskState, base: str | None) -> int:
    """How many chain images a pull down to `base` removes."""
    if base is None:
        return len(disk.chain)
    if base not in disk.chain:
        raise HostError(
            ErrorReason.BASE_NOT_IN_CHAIN,
            f"could not find image '{base}' beneath '{disk.target}' in chain for '{disk.source}'",
        )
    return disk.chain.index(base)


def _bandwidth(bandwidth: int | None) -> int:
    if bandwidth is None:
        return 0
    if bandwidth < 0:
        raise HostError(ErrorReason.OTHER, "bandwidth must be a non-negative number")
    return int(bandwidth)


def _require_job(disk: _DiskState, key: DiskKey) -> _Job:
    if disk.job is None:
        raise HostError(ErrorReason.NO_JOB, f"disk '{key.disk}' does not have an active block job")
    return disk.job
