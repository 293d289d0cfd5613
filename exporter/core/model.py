"""What the daemon observes on a host: immutable values shared by every host implementation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Observation:
    domains: tuple[Domain, ...]

    @cached_property
    def _disk_index(self) -> dict[DiskKey, tuple[Domain, Disk]]:
        return {DiskKey(d.name, k.target): (d, k) for d in self.domains for k in d.disks}

    def disks(self) -> Mapping[DiskKey, tuple[Domain, Disk]]:
        """Every disk by key, with its domain: built once per observation, shared by every
        reader (settle, adopt, act, snapshot), so it is read-only."""
        return self._disk_index


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
