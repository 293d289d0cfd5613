"""The `min_free` guard's arithmetic: free space per file system, and what pulls may take of it.

Pure, used by the planner once per plan. A pull writes into its disk's top image, so it takes
space on the file system of that image's directory (`Observation.file_systems`). What it may
still take is bounded by `ChainUsage.growth` (the data allocated in the backing images it pulls,
read when it starts and remembered in `TrackedJob.growth`) and by what its job has left to
visit (`end - cur`). The bound is kept whole while the pull runs - its copied bytes already
show as used space - so the guard errs on the side of waiting, never of filling.

- A new pull starts only if free - (what running pulls there may still take) - its own growth
  stays at or above the floor (`MinFree.floor` of the file system's size).
- A running pull of the daemon's on a file system whose free space is below the floor (filled
  by something else: the guest, another tool) is aborted (`low_space`).
- Disks whose top image is not a local file (block devices, network disks, pool volumes) are
  outside the guard: nothing local measures them. So is everything when `min_free` is 0.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from exporter.core.model import BlockJob, Disk, FileSystem, Observation, Unmeasured
from exporter.policy.values import MinFree


@dataclass(frozen=True)
class SpaceCheck:
    """One file system as the guard saw it in a plan (published as metrics and in status)."""

    mountpoint: str
    size: int
    free: int
    floor: int  # bytes that must stay free
    reserved: int  # the most the pulls running there may still write

    @property
    def spare(self) -> int:
        """What a new pull may take here (negative: even the running pulls may not fit)."""
        return self.free - self.reserved - self.floor


def image_directory(disk: Disk) -> str | None:
    """The directory whose file system a pull into `disk` fills; None: outside the guard."""
    if not disk.local_file or disk.source is None:
        return None
    return posixpath.dirname(disk.source)


def below_floor(fs: FileSystem, min_free: MinFree) -> bool:
    """Something (a guest, another writer) took `fs` below min_free: running pulls there stop."""
    return fs.free < min_free.floor(fs.size)


def still_to_write(job: BlockJob, growth: int | None) -> int:
    """The most a running pull may still add to its top image.

    `end - cur` bounds it once the job reports its length (`cur == end == 0` right after a
    start means "not known yet"); `growth` bounds it when known (None: a pull started by
    somebody else, or before this was remembered).
    """
    left = job.end - job.cur if job.end > 0 else None
    bounds = [b for b in (left, growth) if b is not None]
    return max(0, min(bounds)) if bounds else 0


class SpaceLedger:
    """Free space and reservations per file system during one plan: mutable, local to it."""

    def __init__(self, observation: Observation, min_free: MinFree) -> None:
        self._found = observation.file_systems
        self._min_free = min_free
        self._reserved: dict[str, int] = {}  # mountpoint -> bytes

    @property
    def off(self) -> bool:
        return self._min_free.off

    def file_system(self, disk: Disk) -> FileSystem | Unmeasured | None:
        """The file system a pull into `disk` fills; None when the guard does not apply."""
        directory = image_directory(disk)
        if directory is None or self.off:
            return None
        found = self._found.get(directory)
        return found if found is not None else Unmeasured(directory, "not measured")

    def reserve(self, fs: FileSystem, size: int) -> None:
        self._reserved[fs.mountpoint] = self._reserved.get(fs.mountpoint, 0) + size

    def floor(self, fs: FileSystem) -> int:
        return self._min_free.floor(fs.size)

    def spare(self, fs: FileSystem) -> int:
        return fs.free - self._reserved.get(fs.mountpoint, 0) - self.floor(fs)

    def below_floor(self, fs: FileSystem) -> bool:
        return below_floor(fs, self._min_free)

    def checks(self) -> tuple[SpaceCheck, ...]:
        """Every measured file system, by mount point."""
        if self.off:
            return ()
        found = {fs.mountpoint: fs for fs in self._found.values() if isinstance(fs, FileSystem)}
        return tuple(
            SpaceCheck(m, fs.size, fs.free, self.floor(fs), self._reserved.get(m, 0))
            for m, fs in sorted(found.items())
        )
