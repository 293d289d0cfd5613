"""The real host: libvirt-python against a libvirtd (usually qemu:///system).

How observe() reads the host, chosen from bench/RESULTS.md (observe costs; libvirt 9.0, 50 TCG
domains, 2 disks each): `getAllDomainStats(STATE)` lists every domain with its state in one call
(0.006 ms/domain, against 0.04 ms for a `virDomainGetState` per domain); `XMLDesc(0)` per domain
(0.07-0.13 ms; libvirtd answers from memory) gives disks, chains, readonly, transient and
`<mirror>`; an XML equal to the domain's previous one is not parsed again (ParsedDisks).
`blockJobInfo` (0.06-0.17 ms/disk) is the cost that grows with the host: observe() runs it for
disks of running or paused domains that have a `<mirror>` or a job this host started or saw.
Jobs started by others (`virsh blockpull`) show in no event and no XML: `sweep_jobs()`, called
by the controller every few seconds, reads the part of the chained disks that is due
(job_sweep.py), so each is read once per `job_sweep_interval` (50 s: a foreign job counts
within a minute) at a steady cost, outside the full reconcile. The first observe() after every
(re)connection reads them all at once. Before a pull starts, `inspect()` reads every disk of its
domain, and what its chain holds with one `domainListGetStats(BLOCK, BACKING)` for those
domains only (block_stats.py). For every domain on every observe that call would cost ~2.9
ms/domain (it asks every QEMU): not used there. observe() also measures the free space of the
image directories (local_fs.py): one statvfs per file system.

Bandwidth always travels in bytes/s (the *_BANDWIDTH_BYTES flags). libvirt's 0 = unlimited is
None everywhere else in the daemon: converted here, once each way (`_to_libvirt`,
`_from_libvirt`).
`abort()` uses `blockJobAbort(disk, 0)`, which waits until QEMU has cancelled the job (a few
ms on a pull) and makes libvirt emit BLOCK_JOB_2 `canceled`.

Connection: keepalive 5 s x 3 and a close callback. When the connection drops, the sink gets
ConnectionEvent(up=False) and calls raise HostError(CONNECTION). The next call tries to
reconnect (how often is the caller's choice: the controller backs off, on its injected clock),
registers the event callbacks again and emits ConnectionEvent(up=True) so the controller
resyncs. Nothing retries on its own: no thread sleeps or loops on reconnection.

One module although over 500 lines: every call shares the one connection, its lock, the domain
handles and the set of known jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import libvirt

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
    FileSystem,
    HostError,
    HostEvent,
    Inspection,
    JobEvent,
    JobOutcome,
    JobType,
    LifecycleEvent,
    Observation,
    Unmeasured,
)
from exporter.hosts.libvirt.block_stats import read_chain_usage
from exporter.hosts.libvirt.domain_xml import ParsedDisks, normalise_target
from exporter.hosts.libvirt.errors import host_error
from exporter.hosts.libvirt.event_loop import EventLoop, shared_loop
from exporter.hosts.libvirt.job_sweep import JobSweep
from exporter.hosts.local_fs import LocalFileSystems

log = logging.getLogger(__name__)

Connect = Callable[[str], libvirt.virConnect]
P = ParamSpec("P")
R = TypeVar("R")

_JOB_TYPES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL: JobType.PULL,
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY: JobType.COPY,
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT: JobType.COMMIT,
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT: JobType.ACTIVE_COMMIT,
    libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP: JobType.BACKUP,
}
_OUTCOMES = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: JobOutcome.COMPLETED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: JobOutcome.FAILED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: JobOutcome.CANCELED,
    libvirt.VIR_DOMAIN_BLOCK_JOB_READY: JobOutcome.READY,
}
_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,  # running, waiting on a resource
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
}
_LIFECYCLE = (
    "defined",
    "undefined",
    "started",
    "suspended",
    "resumed",
    "stopped",
    "shutdown",
    "pmsuspended",
    "crashed",
)
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}
_NOT_RELATIVE = "can't keep relative backing relationship"
# A job that vanished with its domain, disk or job is "no job", not a failed refresh.
_GONE = frozenset(
    {
        ErrorReason.DOMAIN_NOT_FOUND,
        ErrorReason.DOMAIN_NOT_RUNNING,
        ErrorReason.DISK_NOT_FOUND,
        ErrorReason.NO_JOB,
    }
)


@dataclass
class _Session:
    """One libvirt connection and the callbacks registered on it (mutable, owned by the host)."""

    conn: libvirt.virConnect
    callback_ids: list[int] = field(default_factory=list)
    lost: bool = False


class LibvirtHost:
    def __init__(
        self,
        uri: str,
        *,
        connect: Connect = libvirt.open,
        clock: Callable[[], float] = time.monotonic,
        keepalive: tuple[int, int] = (5, 3),
        loop: EventLoop | None = None,
        job_sweep_interval: float = 50.0,
    ) -> None:
        """Connects lazily, on the first call: a libvirtd that is down is a HostError later,
        not a failure to construct."""
        self._uri = uri
        self._connect = connect
        self._clock = clock
        self._keepalive = keepalive
        self._loop = loop if loop is not None else shared_loop()
        self._loop.acquire()
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._sink: EventSink | None = None
        self._ever_connected = False
        self._closed = False
        self._domains: dict[str, libvirt.virDomain] = {}  # handles from the last observe()
        self._known_jobs: set[DiskKey] = set()  # started here, or seen running
        self._parsed = ParsedDisks()  # used by the observing thread only
        remote = (  # qemu+ssh://host/system: the images are not on this machine
            f"the images are on the host of {uri}: their free space cannot be measured from "
            "here (set min_free: 0 to pull without the guard)"
            if urllib.parse.urlsplit(uri).hostname
            else None
        )
        self._space = LocalFileSystems(remote)  # used by the observing thread only
        self._sweep = JobSweep(job_sweep_interval)  # the first observe() reads every one
        self._sweep_in_observe = True  # until the first observe after a (re)connection
        self._sweepable: list[tuple[int, libvirt.virDomain, DiskKey]] = []  # part, dom, disk

    # -- Host protocol ------------------------------------------------------------------------

    def observe(self) -> Observation:
        conn = self._connection()
        try:
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
        except libvirt.libvirtError as error:
            raise self._failed(error) from error
        domains: list[Domain] = []
        handles: dict[str, libvirt.virDomain] = {}
        now = self._clock()
        with self._lock:
            sweep = self._sweep.due(now) if self._sweep_in_observe else frozenset()
            self._sweep_in_observe = False
            known = frozenset(self._known_jobs)  # one lock per observe, not one per disk
        sweepable: list[tuple[int, libvirt.virDomain, DiskKey]] = []
        for dom, values in stats:
            state = _STATES.get(values.get("state.state"), DomainState.OTHER)
            domain = self._domain(dom, state, sweep, known)
            if domain is not None:
                domains.append(domain)
                handles[domain.name] = dom
                if state.can_run_jobs:
                    part = self._sweep.part(domain.uuid)
                    sweepable += [
                        (part, dom, DiskKey(domain.name, d.target)) for d in domain.disks if d.chain
                    ]
        self._parsed.keep_only({d.uuid for d in domains})
        domains = self._states_after(conn, domains)
        with self._lock:
            self._domains = handles
            self._sweepable = sweepable
        return Observation(tuple(domains), self._space.of_domains(domains))

    def sweep_jobs(self) -> Sweep:
        """Read the due part of the chained disks' jobs (as of the last observe)."""
        with self._lock:
            now = self._clock()
            due = self._sweep.due(now)
            next_in = max(0.0, self._sweep.next_due() - now)
            known = frozenset(self._known_jobs)
            wanted = [(dom, key) for part, dom, key in self._sweepable if part in due]
        found = False
        for dom, key in wanted:
            if key in known:
                continue
            try:
                found |= self._job_info(dom, key) is not None
            except HostError as error:
                self._unread(error, key)
        return Sweep(found, next_in)

    def _states_after(self, conn: libvirt.virConnect, domains: list[Domain]) -> list[Domain]:
        """The domains with their state read again, after their XML.

        libvirt drops a disk's backing chain from the live XML as soon as the domain starts
        going down, while the first listing may still say running: read in that order, a
        destroyed domain mid-pull would look like a running one whose pull just completed.
        States only move towards shut off, so a state read after the XML is the safe one.
        """
        try:
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
        except libvirt.libvirtError as error:
            raise self._failed(error) from error
        states = {
            dom.UUIDString(): _STATES.get(values.get("state.state"), DomainState.OTHER)
            for dom, values in stats
        }
        fresh = [
            dataclasses.replace(d, state=states[d.uuid]) if states[d.uuid] != d.state else d
            for d in domains
            if d.uuid in states  # undefined meanwhile
        ]
        return sorted(fresh, key=lambda d: d.name)

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        conn = self._connection()
        result: dict[DiskKey, BlockJob | None] = {}
        for key in keys:
            try:
                result[key] = self._job_info(self._handle(conn, key.domain), key)
            except HostError as error:
                self._unread(error, key)
                result[key] = None
        return result

    def file_systems(self, directories: Iterable[str]) -> Mapping[str, FileSystem | Unmeasured]:
        return self._space.measure(directories)

    def inspect(self, domains: Iterable[str]) -> Mapping[str, Inspection]:
        """Every disk's blockJobInfo, and one domainListGetStats(BLOCK, BACKING) for all the
        domains together (block_stats.py). A domain whose jobs cannot all be read is left out:
        no pull starts where a job might run unseen."""
        conn = self._connection()
        handles: dict[str, libvirt.virDomain] = {}
        for name in domains:
            try:
                handles[name] = self._handle(conn, name)
            except HostError as error:
                if error.reason is ErrorReason.CONNECTION:
                    raise
        usage = self._chain_usage(conn, handles)
        found: dict[str, Inspection] = {}
        for name, dom in handles.items():
            jobs = self._all_jobs(name, dom)
            if jobs is not None:
                found[name] = Inspection(jobs, usage.get(name, {}))
        return found

    def _all_jobs(self, name: str, dom: libvirt.virDomain) -> dict[str, BlockJob] | None:
        parsed = self._parsed.last(dom.UUIDString())
        if parsed is None:
            return None
        jobs: dict[str, BlockJob] = {}
        for item in parsed:
            key = DiskKey(name, item.disk.target)
            try:
                job = self._job_info(dom, key)
            except HostError as error:
                self._unread(error, key)
                if error.reason is ErrorReason.NO_JOB:
                    continue
                return None  # a job might run there unseen: no start in this domain
            if job is not None:
                jobs[key.disk] = job
        return jobs

    def _chain_usage(
        self, conn: libvirt.virConnect, handles: Mapping[str, libvirt.virDomain]
    ) -> dict[str, dict[str, ChainUsage]]:
        def disks_of(dom: libvirt.virDomain) -> tuple[Disk, ...]:
            return tuple(item.disk for item in self._parsed.last(dom.UUIDString()) or ())

        try:
            return read_chain_usage(conn, handles, disks_of)
        except libvirt.libvirtError as error:
            failure = self._failed(error)
            if failure.reason is ErrorReason.CONNECTION:
                raise failure from error
            log.warning("cannot read the block stats of %s: %s", ", ".join(handles), failure)
            return {}

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        dom = self._handle(self._connection(), key.domain)
        try:
            self._start(dom, key, base, _to_libvirt(bandwidth))
        except HostError as error:
            if error.reason is ErrorReason.DISK_BUSY:  # someone else's job: read it from now on
                with self._lock:
                    self._known_jobs.add(key)
            raise
        with self._lock:
            self._known_jobs.add(key)

    def _start(self, dom: libvirt.virDomain, key: DiskKey, base: str | None, speed: int) -> None:
        if base is None:
            flags = libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
            self._call(dom.blockPull, key.disk, speed, flags)
        else:
            flags = libvirt.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES
            try:  # keep a relative chain relative; libvirt refuses when it is absolute
                relative = flags | libvirt.VIR_DOMAIN_BLOCK_REBASE_RELATIVE
                self._call(dom.blockRebase, key.disk, base, speed, relative)
            except HostError as error:
                if _NOT_RELATIVE not in error.message:
                    raise
                self._call(dom.blockRebase, key.disk, base, speed, flags)

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        dom = self._handle(self._connection(), key.domain)
        flags = libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES
        self._call(dom.blockJobSetSpeed, key.disk, _to_libvirt(bandwidth), flags)

    def abort(self, key: DiskKey) -> None:
        dom = self._handle(self._connection(), key.domain)
        self._call(dom.blockJobAbort, key.disk, 0)

    def subscribe(self, sink: EventSink) -> None:
        with self._lock:
            self._sink = sink

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            session, self._session = self._session, None
            self._sink = None
            self._domains = {}
        if session is not None:
            _dispose(session)
        self._loop.release()

    # -- reading ------------------------------------------------------------------------------

    def _domain(
        self,
        dom: libvirt.virDomain,
        state: DomainState,
        sweep: frozenset[int],
        known: frozenset[DiskKey],
    ) -> Domain | None:
        name, uuid = dom.name(), dom.UUIDString()
        try:
            parsed = self._parsed.of(uuid, dom.XMLDesc(0))
        except libvirt.libvirtError as error:
            failure = self._failed(error)
            if failure.reason is ErrorReason.DOMAIN_NOT_FOUND:
                return None  # undefined between the listing and now
            raise failure from error
        swept = self._sweep.part(uuid) in sweep
        disks: list[Disk] = []
        for item in parsed:
            disk = item.disk
            key = DiskKey(name, disk.target)
            if state.can_run_jobs and (item.mirror or key in known or (swept and disk.chain)):
                disk = self._with_job(dom, key, disk)
            disks.append(disk)
        return Domain(name=name, uuid=uuid, state=state, disks=tuple(disks))

    def _with_job(self, dom: libvirt.virDomain, key: DiskKey, disk: Disk) -> Disk:
        try:
            job = self._job_info(dom, key)
        except HostError as error:
            self._unread(error, key)
            return disk
        if job is None:
            return disk
        return dataclasses.replace(disk, job=job)

    def _unread(self, error: HostError, key: DiskKey) -> None:
        """A job read failed: a lost connection goes on up; anything but a domain, disk or job
        that is gone is logged. The caller decides what an unread job means."""
        if error.reason is ErrorReason.CONNECTION:
            raise error
        if error.reason not in _GONE:
            log.warning("cannot read the block job of %s: %s", key, error)

    def _job_info(self, dom: libvirt.virDomain, key: DiskKey) -> BlockJob | None:
        flags = libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
        info = self._call(dom.blockJobInfo, key.disk, flags)
        with self._lock:
            if info:
                self._known_jobs.add(key)
            else:
                self._known_jobs.discard(key)
        if not info:
            return None
        return BlockJob(
            type=_JOB_TYPES.get(info.get("type", 0), JobType.UNKNOWN),
            cur=int(info.get("cur", 0)),
            end=int(info.get("end", 0)),
            bandwidth=_from_libvirt(int(info.get("bandwidth", 0))),
        )

    def _handle(self, conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
        with self._lock:
            dom = self._domains.get(name)
        if dom is not None:
            return dom
        return self._call(conn.lookupByName, name)

    def _call(self, method: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except libvirt.libvirtError as error:
            raise self._failed(error) from error

    def _failed(self, error: libvirt.libvirtError) -> HostError:
        failure = host_error(error)
        if failure.reason is ErrorReason.CONNECTION:
            with self._lock:
                session = self._session
            if session is not None:
                self._lose(session, failure.message)
        elif failure.reason is ErrorReason.DOMAIN_NOT_FOUND:
            with self._lock:  # a stale handle: look the name up again next time
                self._domains = {}
        return failure

    # -- connection ---------------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._closed:
                raise HostError(ErrorReason.CONNECTION, "host closed")
            session = self._session
            if session is not None and not session.lost:
                return session.conn
            self._session = None
        if session is not None:
            _dispose(session)
        return self._reconnect()

    def _reconnect(self) -> libvirt.virConnect:
        session: _Session | None = None
        try:
            session = _Session(self._connect(self._uri))
            session.conn.setKeepAlive(*self._keepalive)
            session.conn.registerCloseCallback(self._on_close, session)
            session.callback_ids = self._register_events(session.conn)
        except libvirt.libvirtError as error:
            if session is not None:
                _dispose(session)
            raise HostError(ErrorReason.CONNECTION, host_error(error).message) from error
        with self._lock:
            reconnected = self._ever_connected
            self._ever_connected = True
            self._session = session
            self._domains = {}
            self._sweep.restart()  # jobs may have started or ended while disconnected
            self._sweep_in_observe = True
        if reconnected:
            self._emit(ConnectionEvent(up=True, reason="reconnected"))
        return session.conn

    def _register_events(self, conn: libvirt.virConnect) -> list[int]:
        return [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_block_job, None
            ),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            ),
        ]

    def _lose(self, session: _Session, reason: str) -> None:
        with self._lock:
            if session.lost or session is not self._session:
                return
            session.lost = True
        log.warning("lost the connection to %s: %s", self._uri, reason)
        self._emit(ConnectionEvent(up=False, reason=reason))

    # -- callbacks (event-loop thread: never block, never raise into libvirt) ----------------

    def _on_close(self, _conn: libvirt.virConnect, reason: int, session: _Session) -> None:
        self._lose(session, _CLOSE_REASONS.get(reason, f"closed ({reason})"))

    def _on_block_job(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        disk: str,
        job_type: int,
        status: int,
        _opaque: object,
    ) -> None:
        outcome = _OUTCOMES.get(status)
        if outcome is None:
            return
        key = DiskKey(dom.name(), normalise_target(disk))
        if outcome is not JobOutcome.READY:
            with self._lock:
                self._known_jobs.discard(key)
        self._emit(JobEvent(key, _JOB_TYPES.get(job_type, JobType.UNKNOWN), outcome))

    def _on_lifecycle(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        event: int,
        _detail: int,
        _opaque: object,
    ) -> None:
        name = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else f"event-{event}"
        self._emit(LifecycleEvent(dom.name(), name))

    def _emit(self, event: HostEvent) -> None:
        with self._lock:
            sink = self._sink
        if sink is None:
            return
        try:
            sink(event)
        except Exception:  # a broken sink must not unwind into libvirt's C event loop
            log.exception("event sink failed on %s", event)


def _to_libvirt(bandwidth: int | None) -> int:
    return 0 if bandwidth is None else bandwidth  # libvirt: 0 = unlimited


def _from_libvirt(bandwidth: int) -> int | None:
    return bandwidth if bandwidth > 0 else None  # libvirt: 0 = unlimited


def _dispose(session: _Session) -> None:
    """Deregister and close; the connection may be dead already, so errors are expected."""
    conn = session.conn
    for callback_id in session.callback_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
