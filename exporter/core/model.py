"""What the daemon observes on a host: immutable values shared by every host implementation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property


class DomainState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # block jobs still run in a paused domain
    SHUTOFF = "shutoff"
    OTHER = "other"  # crashed, suspended to disk, ...

    @property
    def can_run_jobs(self) -> bool:
        return self in (DomainState.RUNNING, DomainState.PAUSED)


class JobType(StrEnum):
    PULL = "pull"
    COPY = "copy"
    COMMIT = "commit"
    ACTIVE_COMMIT = "active_commit"
    BACKUP = "backup"
    UNKNOWN = "unknown"


@dataclass(frozen=True, order=True)
class DiskKey:
    """A disk by domain name and target device (vda, sdb, ...)."""

    domain: str
    disk: str

    def __str__(self) -> str:
        return f"{self.domain}/{self.disk}"


@dataclass(frozen=True)
class BlockJob:
    type: JobType
    cur: int  # bytes copied so far
    end: int  # bytes to copy; cur == end == 0 right after a start is NOT completion
    bandwidth: int | None  # bytes/s; None = unlimited (libvirt's 0 is converted in its adapter)

    def __post_init__(self) -> None:
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"a job's bandwidth is positive or None (unlimited): {self.bandwidth}")


@dataclass(frozen=True)
class Disk:
    target: str  # vda, sdb, ...
    source: str | None  # the top image; None for network disks without a path, empty CD-ROMs
    chain: tuple[str, ...]  # backing images below the top, nearest first; () = independent
    readonly: bool = False
    transient: bool = False
    job: BlockJob | None = None
    # The top image is a file on a local file system (disk type 'file'): the min_free guard
    # applies. Block devices, network disks and pool volumes are not measured.
    local_file: bool = False

    @property
    def fingerprint(self) -> str:
        """Changes when the disk is replaced or its chain changes; resets gave_up."""
        return "\x00".join((self.source or "", *self.chain))


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    state: DomainState
    disks: tuple[Disk, ...]

    def with_jobs(self, jobs: Mapping[str, BlockJob]) -> Domain:
        """This domain with every disk's job as given (no entry: no job)."""
        disks = tuple(replace(d, job=jobs.get(d.target)) for d in self.disks)
        return replace(self, disks=disks)


@dataclass(frozen=True)
class FileSystem:
    """The file system holding an image directory, as statvfs(2) measured it."""

    mountpoint: str  # names it: the highest directory above the images on the same device
    size: int  # bytes
    free: int  # bytes an unprivileged writer (QEMU) may still use


@dataclass(frozen=True)
class Unmeasured:
    """An image directory whose file system could not be measured, and why."""

    directory: str
    error: str


QCOW2_METADATA = 512  # qcow2's tables take under 1/512 of the data (64 KiB clusters)


@dataclass(frozen=True)
class ChainUsage:
    """What a pull can add to one disk's top image, read through libvirt for that disk."""

    capacity: int  # the disk's virtual size in bytes
    allocated: tuple[int, ...]  # host bytes of each backing image, nearest first (Disk.chain);
    # libvirt reports a network image's virtual size, which bounds what it can hold
    top: int = 0  # host bytes the top image holds already

    def growth(self, chain: tuple[str, ...], base: str | None) -> int:
        """The most the top image grows by when everything above `base` is pulled into it:
        the data allocated in those images, and never more than the top can still take (the
        disk's virtual size and its qcow2 metadata, less what the top holds: after an
        interrupted pull, what it copied already)."""
        depth = chain.index(base) if base is not None and base in chain else len(chain)
        room = self.capacity + self.capacity // QCOW2_METADATA - self.top
        return max(0, min(room, sum(self.allocated[:depth])))


@dataclass(frozen=True)
class Inspection:
    """One domain read in full right before a pull may start in it: the block job of every
    disk (the sweep may not have seen somebody else's yet) and what each chain holds."""

    jobs: Mapping[str, BlockJob]  # by target; a disk without a job has no entry
    usage: Mapping[str, ChainUsage]  # by target, for the disks whose chain could be read


@dataclass(frozen=True)
class Observation:
    domains: tuple[Domain, ...]
    # Image directories of the disks that may pull (local top image on a backing chain, domain
    # running or paused) -> their file system, measured with this observation.
    file_systems: Mapping[str, FileSystem | Unmeasured] = field(default_factory=dict)
    inspections: Mapping[str, Inspection] = field(default_factory=dict)  # by domain name
    # Domains asked for a full read that libvirt could not give (a job unreadable): no pull
    # starts there until a later observation reads them.
    unread: frozenset[str] = frozenset()

    @cached_property
    def _disk_index(self) -> dict[DiskKey, tuple[Domain, Disk]]:
        return {DiskKey(d.name, k.target): (d, k) for d in self.domains for k in d.disks}

    def disks(self) -> Mapping[DiskKey, tuple[Domain, Disk]]:
        """Every disk by key, with its domain: built once per observation, shared by every
        reader (settle, adopt, act, snapshot), so it is read-only."""
        return self._disk_index

    def with_inspections(
        self, found: Mapping[str, Inspection], asked: Iterable[str] = ()
    ) -> Observation:
        """The same observation with these domains' jobs as their inspection read them; those
        `asked` but not `found` are `unread`."""
        unread = self.unread | (frozenset(asked) - found.keys())
        if not found:
            return replace(self, unread=unread) if unread != self.unread else self
        domains = tuple(
            d.with_jobs(found[d.name].jobs) if d.name in found else d for d in self.domains
        )
        inspections = {**self.inspections, **found}
        return replace(self, domains=domains, inspections=inspections, unread=unread)


class JobOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    READY = "ready"  # copy/active-commit only; a pull never reports it


@dataclass(frozen=True)
class JobEvent:
    """libvirt's BLOCK_JOB_2 event: a hint that wakes the controller, never the truth."""

    key: DiskKey
    type: JobType
    outcome: JobOutcome


@dataclass(frozen=True)
class LifecycleEvent:
    domain: str
    event: str  # started, stopped, defined, undefined, ... (lower-case libvirt names)


@dataclass(frozen=True)
class ConnectionEvent:
    up: bool
    reason: str = ""


HostEvent = JobEvent | LifecycleEvent | ConnectionEvent


class ErrorReason(StrEnum):
    """Why a host call failed, as short stable words used in logs, plans and metrics."""

    DOMAIN_NOT_FOUND = "domain_not_found"
    DOMAIN_NOT_RUNNING = "domain_not_running"
    DISK_NOT_FOUND = "disk_not_found"
    DISK_BUSY = "disk_busy"  # another block job runs on the disk
    BASE_NOT_IN_CHAIN = "base_not_in_chain"
    NO_JOB = "no_job"
    CONNECTION = "connection"  # libvirtd unreachable
    OTHER = "other"


class HostError(Exception):
    """A host call failed. A plain exception (not a frozen dataclass): Python must be able to
    set `__traceback__` on it, e.g. when it passes through a `contextmanager`."""

    def __init__(self, reason: ErrorReason, message: str = "") -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message else str(self.reason)
