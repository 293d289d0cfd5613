"""The simulated world's records: a domain, its disks and the block job running on one.

Mutable, owned by `exporter.hosts.sim.world.SimWorld` and changed only under its lock; the
JSON state (`exporter.hosts.sim.state`) reads and rebuilds them. Each record hands out
immutable `exporter.core.model` views, cached while nothing changes.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace

from exporter.core.model import (
    BlockJob,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    ErrorReason,
    FileSystem,
    HostError,
    JobType,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


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


def job_rate(bandwidth: int | None, device_speed: int) -> float:
    """Bytes/s a job achieves: its limit, capped by the device (None = unlimited)."""
    return float(device_speed if bandwidth is None else min(bandwidth, device_speed))


@dataclass
class JobRecord:
    """A running block job. Progress is linear from `anchor`, so nothing ticks per step."""

    key: DiskKey
    type: JobType
    bandwidth: int | None  # bytes/s as set by the caller; None = unlimited
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
class DiskRecord:
    target: str
    source: str | None
    chain: tuple[str, ...]
    sizes: tuple[int, ...]
    readonly: bool
    transient: bool
    copied: int = 0  # bytes of the backing data already in the overlay (from interrupted pulls)
    job: JobRecord | None = None
    value: Disk | None = None  # cached view without job
    local_file: bool = False  # its directory is on a simulated file system (FileSystemRecord)

    @property
    def directory(self) -> str | None:
        return posixpath.dirname(self.source) if self.source else None

    @property
    def capacity(self) -> int:
        """The virtual size: room for all its backing data, at least 1 GiB."""
        return max(sum(self.sizes), GiB)

    @classmethod
    def of(cls, spec: SimDisk) -> DiskRecord:
        return cls(
            spec.target, spec.source, tuple(spec.chain), spec.sizes(), spec.readonly, spec.transient
        )

    def view(self) -> Disk:
        if self.value is None:
            self.value = Disk(
                self.target,
                self.source,
                self.chain,
                self.readonly,
                self.transient,
                local_file=self.local_file,
            )
        return self.value

    def view_at(self, now: float) -> Disk:
        """The disk with its job's progress at `now`."""
        if self.job is None:
            return self.view()
        return replace(self.view(), job=self.job.view(now))

    def cut(self, base: str | None) -> int:
        """How many chain images a pull down to `base` removes."""
        if base is None:
            return len(self.chain)
        if base not in self.chain:
            raise HostError(
                ErrorReason.BASE_NOT_IN_CHAIN,
                f"could not find image '{base}' beneath '{self.target}' in chain for "
                f"'{self.source}'",
            )
        return self.chain.index(base)


@dataclass
class DomainRecord:
    name: str
    uuid: str
    state: DomainState
    disks: dict[str, DiskRecord]
    jobs: int = 0
    value: Domain | None = None  # cached view, valid while no job runs and nothing changes

    def add_disk(self, spec: SimDisk) -> DiskRecord:
        if spec.target in self.disks:
            raise ValueError(f"domain {self.name!r} already has a disk {spec.target!r}")
        disk = self.disks[spec.target] = DiskRecord.of(spec)
        return disk

    def view(self, now: float) -> Domain:
        if self.jobs == 0:
            if self.value is None:
                disks = tuple(disk.view() for disk in self.disks.values())
                self.value = Domain(self.name, self.uuid, self.state, disks)
            return self.value
        disks = tuple(disk.view_at(now) for disk in self.disks.values())
        return Domain(self.name, self.uuid, self.state, disks)


@dataclass
class FileSystemRecord:
    """A simulated file system holding the images of one directory. Pulls into its disks use
    its space as they copy; `fill` stands for everything else that writes there."""

    directory: str
    size: int
    free: float  # bytes free, less what pulls copied by the last time they ended or were read

    def view(self, copying: float) -> FileSystem:
        """As statvfs would see it while running pulls have copied `copying` more bytes."""
        free = max(0, min(self.size, int(self.free - copying)))
        return FileSystem(mountpoint=self.directory, size=self.size, free=free)


@dataclass
class WorldParts:
    """Every record of a world at `now`, as `exporter.hosts.sim.state` writes and reads them.

    Derived data (job schedule, cached views) is left out: the world rebuilds it.
    """

    now: float
    device_speed: int
    connected: bool
    copied_total: float  # bytes copied by jobs that have ended
    domains: list[DomainRecord]  # disks' `job` is not written: installing attaches `jobs`
    jobs: list[JobRecord]
    fail_next: dict[DiskKey, HostError]  # the next start_pull of the disk raises this
    file_systems: list[FileSystemRecord]
