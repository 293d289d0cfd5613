"""The simulated world and its time: domains, disks, backing chains and block jobs that progress
with simulated time, plus the faults real hosts show: failed jobs, destroyed domains, a dropped
libvirtd connection, jobs started by hand, pulls that finish unannounced.

Where the daemon could tell the difference it behaves like libvirt 9.0 with QEMU:

- a pull started right now reports `cur == end == 0` until time moves on;
- a pull re-started after an abort skips what is already in the overlay: its cursor jumps over
  those bytes at once (QEMU counts skipped clusters as progress) and only the rest takes time;
- a domain destroyed mid-pull emits lifecycle events only, never a block-job event;
- events raised while the connection is down are lost; jobs keep running in QEMU meanwhile.

Time is either owned by the world (the default: `advance()` moves it, and `world.clock` is an
`exporter.core.clock.Clock` whose `wait` advances it, stopping at the instant an event arrives)
or followed from an injected `Clock` (every operation first catches up to `clock.time()`).

Events are queued under the world's lock and handed to the sink after it is released, so a sink
may call back; a sink must not block on another thread that is calling the world.

`exporter.hosts.sim.host.SimulatedHost` puts the Host protocol on this world;
`exporter.hosts.sim.state` is its JSON form. One module although over 500 lines: every method
here changes the same records under one lock and one job schedule.
"""

from __future__ import annotations

import heapq
import queue
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from exporter.core.clock import Clock
from exporter.core.host import EventSink
from exporter.core.model import (
    BlockJob,
    ConnectionEvent,
    Disk,
    DiskKey,
    DomainState,
    ErrorReason,
    FileSystem,
    HostError,
    HostEvent,
    JobEvent,
    JobOutcome,
    JobType,
    LifecycleEvent,
)
from exporter.hosts.sim.records import (
    DiskRecord,
    DomainRecord,
    FileSystemRecord,
    GiB,
    JobRecord,
    SimDisk,
    WorldParts,
    job_rate,
)

T = TypeVar("T")

DEFAULT_EPOCH = 1_767_225_600.0  # 2026-01-01T00:00:00Z, as exporter.core.clock.ManualClock

# Jobs that mirror: at `end` they turn READY and keep running until pivoted or aborted.
_MIRROR_TYPES = frozenset({JobType.COPY, JobType.ACTIVE_COMMIT})


class SimClock:
    """An `exporter.core.clock.Clock` driven by a SimWorld that owns its time.

    `wait` advances the world until an item arrives in the inbox (e.g. the world's own event,
    delivered at the instant it happens) or the timeout has passed; it never sleeps.
    """

    def __init__(self, world: SimWorld) -> None:
        self._world = world

    def time(self) -> float:
        return self._world.now()

    def monotonic(self) -> float:
        return self._world.now()

    def advance(self, seconds: float) -> None:
        self._world.advance(seconds)

    def wait(self, inbox: queue.SimpleQueue[T], timeout: float) -> T | None:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            pass
        self._world.advance(max(0.0, timeout), stop=lambda: not inbox.empty())
        try:
            return inbox.get_nowait()
        except queue.Empty:
            return None


class SimWorld:
    """Domains, disks and jobs in memory, on simulated time. See the module docstring."""

    def __init__(
        self, *, clock: Clock | None = None, start: float = DEFAULT_EPOCH, device_speed: int = GiB
    ) -> None:
        """`clock`: follow this clock's `time()`; None: own the time, starting at `start`.

        `device_speed` (bytes/s) caps every job, so it is the speed of an unlimited one.
        """
        if device_speed <= 0:
            raise ValueError("device_speed must be positive")
        self._external = clock
        self._now = float(clock.time() if clock is not None else start)
        self._device_speed = device_speed
        self._lock = threading.RLock()
        self._sink: EventSink | None = None
        self._pending: list[HostEvent] = []
        self._reset_world()

    def _reset_world(self) -> None:
        self._domains: dict[str, DomainRecord] = {}
        self._jobs: dict[DiskKey, JobRecord] = {}
        self._heap: list[tuple[float, int, DiskKey, int]] = []  # finish, tie-break, key, version
        self._seq = 0
        self._connected = True
        self._fail_next: dict[DiskKey, HostError] = {}
        self._copied_total = 0.0  # bytes copied by jobs that have ended
        self._file_systems: dict[str, FileSystemRecord] = {}  # by the image directory

    # -- time -------------------------------------------------------------------------------

    @property
    def clock(self) -> SimClock:
        """A Clock for the controller under test, driven by this world's time."""
        if self._external is not None:
            raise ValueError("this world follows an injected clock; use that one")
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
            domain = DomainRecord(
                name, uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name)), state, {}
            )
            for disk in disks:
                record = domain.add_disk(disk)
                record.local_file = record.directory in self._file_systems
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

    def add_file_system(self, directory: str, size: int, free: int) -> None:
        """The images in `directory` (and only there) live on a file system of `size` bytes
        with `free` bytes free: their disks become local files, under the min_free guard."""
        if not 0 <= free <= size:
            raise ValueError("a file system has 0 <= free <= size bytes")
        with self._op(mutating=True):
            self._file_systems[directory] = FileSystemRecord(directory, size, float(free))
            self._mark_local_files_locked()

    def fill_file_system(self, directory: str, size: int) -> None:
        """Something else writes `size` bytes there (a negative size frees them)."""
        with self._op(mutating=True):
            self._file_systems[directory].free -= size

    def set_device_speed(self, bytes_per_second: int) -> None:
        if bytes_per_second <= 0:
            raise ValueError("device speed must be positive")
        with self._op(mutating=True):
            self._device_speed = bytes_per_second
            for job in self._jobs.values():
                if not job.ready:
                    self._reanchor_locked(job)
                    job.rate = job_rate(job.bandwidth, self._device_speed)
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

    def _stop_locked(self, domain: DomainRecord) -> None:
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
        bandwidth: int | None = None,
        *,
        base: str | None = None,
        end: int | None = None,
    ) -> None:
        """A job the daemon did not start (e.g. `virsh blockpull` by hand).

        A pull behaves like any pull. COPY and ACTIVE_COMMIT turn READY at `end` and stay;
        other types complete at `end` leaving the chain alone. `end` defaults to the bytes a
        pull down to `base` would copy. `bandwidth` in bytes/s, None = unlimited.
        """
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth must be positive (None = unlimited)")
        with self._op(mutating=True):
            domain, disk = self._disk_locked(key)
            if not domain.state.can_run_jobs:
                raise ValueError(f"domain {key.domain!r} is not running")
            if disk.job is not None:
                raise ValueError(f"{key}: a block job runs on it already")
            size = sum(disk.sizes[: disk.cut(base)]) if end is None else end
            self._start_job_locked(domain, disk, key, type, bandwidth, size, base)

    def complete_silently(self, key: DiskKey) -> None:
        """The pull finishes now without any event, as when libvirtd was down meanwhile."""
        with self._op(mutating=True):
            job = self._job_locked(key)
            if job.type is not JobType.PULL:
                raise ValueError(f"{key}: only a pull can complete silently")
            self._end_job_locked(job, completed=True, outcome=None)

    # -- inspection (free: no call counted, works while disconnected) -----------------------

    def running_jobs(self) -> dict[DiskKey, BlockJob]:
        with self._op(mutating=False):
            return {key: job.view(self._now) for key, job in sorted(self._jobs.items())}

    def job(self, key: DiskKey) -> BlockJob | None:
        with self._op(mutating=False):
            job = self._jobs.get(key)
            return job.view(self._now) if job is not None else None

    def disk(self, key: DiskKey) -> Disk:
        with self._op(mutating=False):
            return self._disk_locked(key)[1].view_at(self._now)

    def chain(self, key: DiskKey) -> tuple[str, ...]:
        return self.disk(key).chain

    def domain_state(self, name: str) -> DomainState:
        with self._op(mutating=False):
            return self._domain_locked(name).state

    def copied(self, key: DiskKey) -> int:
        """Bytes of backing data already in the overlay from interrupted pulls."""
        with self._op(mutating=False):
            return self._disk_locked(key)[1].copied

    def file_system_free(self, directory: str) -> int:
        with self._op(mutating=False):
            return self._file_systems_locked()[directory].free

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

    # -- the records as a whole (for exporter.hosts.sim.state) ------------------------------

    def _parts_locked(self) -> WorldParts:
        return WorldParts(
            now=self._now,
            device_speed=self._device_speed,
            connected=self._connected,
            copied_total=self._copied_total,
            domains=list(self._domains.values()),
            jobs=list(self._jobs.values()),
            fail_next=dict(self._fail_next),
            file_systems=list(self._file_systems.values()),
        )

    def _install_locked(self, parts: WorldParts) -> None:
        """Replace every record with `parts`; jobs are attached to their disks and scheduled."""
        self._reset_world()
        self._now = parts.now
        self._device_speed = parts.device_speed
        self._connected = parts.connected
        self._copied_total = parts.copied_total
        self._fail_next = dict(parts.fail_next)
        self._domains = {domain.name: domain for domain in parts.domains}
        self._file_systems = {fs.directory: fs for fs in parts.file_systems}
        self._mark_local_files_locked()
        for job in parts.jobs:
            domain, disk = self._disk_locked(job.key)
            self._attach_job_locked(domain, disk, job)

    # -- internals --------------------------------------------------------------------------

    def _mark_local_files_locked(self) -> None:
        for domain in self._domains.values():
            for disk in domain.disks.values():
                local = disk.directory in self._file_systems
                if disk.local_file != local:
                    disk.local_file, disk.value, domain.value = local, None, None

    def _file_systems_locked(self) -> dict[str, FileSystem]:
        """Each simulated file system as statvfs would see it now, by directory."""
        copying: dict[str, float] = {}
        for job in self._jobs.values():
            directory = self._domains[job.key.domain].disks[job.key.disk].directory
            if job.type is JobType.PULL and directory in self._file_systems:
                copying[directory] = (
                    copying.get(directory, 0.0) + job.done_at(self._now) - job.skipped
                )
        return {d: fs.view(copying.get(d, 0.0)) for d, fs in self._file_systems.items()}

    @contextmanager
    def _op(self, *, mutating: bool, call: str | None = None) -> Iterator[None]:
        """One operation: under the lock, caught up with the clock; events delivered after.

        `call` names a Host protocol call: see `_host_call_locked`.
        """
        self._lock.acquire()
        try:
            self._begin_persistence(mutating)
            try:
                self._catch_up_locked()
                if call is not None:
                    self._host_call_locked(call)
                yield
            finally:
                self._end_persistence(mutating)
        finally:
            self._lock.release()
            self._flush()

    def _host_call_locked(self, call: str) -> None:
        """A Host protocol call begins: it fails while the connection is down."""
        if not self._connected:
            raise HostError(ErrorReason.CONNECTION, "cannot reach libvirtd")

    def _begin_persistence(self, mutating: bool) -> None:
        """Hook for a world whose state lives elsewhere (sim.state_file): lock and load."""

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

    def _domain_locked(self, name: str) -> DomainRecord:
        domain = self._domains.get(name)
        if domain is None:
            raise HostError(ErrorReason.DOMAIN_NOT_FOUND, f"no domain with matching name '{name}'")
        return domain

    def _disk_locked(self, key: DiskKey) -> tuple[DomainRecord, DiskRecord]:
        domain = self._domain_locked(key.domain)
        disk = domain.disks.get(key.disk)
        if disk is None:
            raise HostError(ErrorReason.DISK_NOT_FOUND, f"disk '{key.disk}' not found in domain")
        return domain, disk

    def _job_locked(self, key: DiskKey) -> JobRecord:
        job = self._jobs.get(key)
        if job is None:
            raise ValueError(f"{key}: no block job runs on it")
        return job

    def _start_job_locked(
        self,
        domain: DomainRecord,
        disk: DiskRecord,
        key: DiskKey,
        type: JobType,
        bandwidth: int | None,
        end: int,
        base: str | None,
    ) -> None:
        # Clusters already in the overlay are skipped at once; only the rest takes time.
        skipped = float(min(disk.copied, end)) if type is JobType.PULL else 0.0
        job = JobRecord(
            key=key,
            type=type,
            bandwidth=bandwidth,
            end=end,
            base=base,
            started_at=self._now,
            skipped=skipped,
            done=skipped,
            anchor=self._now,
            rate=job_rate(bandwidth, self._device_speed),
        )
        self._attach_job_locked(domain, disk, job)

    def _attach_job_locked(self, domain: DomainRecord, disk: DiskRecord, job: JobRecord) -> None:
        disk.job = job
        domain.jobs += 1
        domain.value = None
        self._jobs[job.key] = job
        if not job.ready:
            self._schedule_locked(job)

    def _reanchor_locked(self, job: JobRecord) -> None:
        job.done = job.done_at(self._now)
        job.anchor = self._now

    def _schedule_locked(self, job: JobRecord) -> None:
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

    def _reach_end_locked(self, job: JobRecord) -> None:
        if job.type in _MIRROR_TYPES:
            job.done, job.anchor, job.ready = float(job.end), self._now, True
            self._emit(JobEvent(job.key, job.type, JobOutcome.READY))
        else:
            self._end_job_locked(job, completed=True, outcome=JobOutcome.COMPLETED)

    def _end_job_locked(
        self, job: JobRecord, *, completed: bool, outcome: JobOutcome | None
    ) -> None:
        done = float(job.end) if completed else job.done_at(self._now)
        self._copied_total += done - job.skipped
        domain = self._domains[job.key.domain]
        disk = domain.disks[job.key.disk]
        on = self._file_systems.get(disk.directory or "")
        if on is not None and job.type is JobType.PULL:  # what it copied stays written
            on.free -= done - job.skipped
        disk.job = None
        domain.jobs -= 1
        domain.value = None
        del self._jobs[job.key]
        if job.type is JobType.PULL:
            if completed:
                cut = disk.cut(job.base) if job.base in disk.chain else len(disk.chain)
                disk.chain, disk.sizes = disk.chain[cut:], disk.sizes[cut:]
                disk.copied = 0
                disk.value = None
            else:  # what was copied stays in the overlay
                disk.copied = max(disk.copied, int(done))
        if outcome is not None:
            self._emit(JobEvent(job.key, job.type, outcome))
