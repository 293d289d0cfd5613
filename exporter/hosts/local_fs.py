"""Free space of the local file systems that hold disk images, for the `min_free` guard.

`statvfs(2)` needs no permission on the file system, only search permission on the directories
above (stat works on a read-only mount, so it works under the unit's ProtectSystem=strict and
as the daemon's own user). Free space is `f_bavail`: what an unprivileged writer such as QEMU
(user libvirt-qemu) may still use; ext4's root reserve is not QEMU's to take.

A file system is named by its mount point, found by walking up from the image directory until
the device changes; that walk is cached per directory and checked against the directory's
device on every measure (a file system mounted there later is noticed). One statvfs per file
system per measure, whatever the number of disks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from exporter.core.model import Domain, FileSystem, Unmeasured
from exporter.core.space import image_directory


class LocalFileSystems:
    """Mutable cache of mount points, owned by one host.

    `unreachable`: why nothing can be measured here (the images are on another machine);
    every directory is then Unmeasured with that reason.
    """

    def __init__(self, unreachable: str | None = None) -> None:
        self._mountpoints: dict[str, tuple[int, str]] = {}  # directory -> (st_dev, mountpoint)
        self._unreachable = unreachable

    def of_domains(self, domains: Iterable[Domain]) -> dict[str, FileSystem | Unmeasured]:
        """The file systems of the image directories pulls may write to: local top images on
        a backing chain, of running or paused domains."""
        directories = {
            directory
            for domain in domains
            if domain.state.can_run_jobs
            for disk in domain.disks
            if disk.chain and (directory := image_directory(disk)) is not None
        }
        found = self.measure(sorted(directories))
        self._forget_except(found.keys())
        return found

    def measure(self, directories: Iterable[str]) -> dict[str, FileSystem | Unmeasured]:
        """Each directory's file system (or why it cannot be measured)."""
        if self._unreachable is not None:
            return {d: Unmeasured(d, self._unreachable) for d in directories}
        result: dict[str, FileSystem | Unmeasured] = {}
        by_device: dict[int, FileSystem | Unmeasured] = {}
        for directory in directories:
            if directory in result:
                continue
            try:
                device, mountpoint = self._mountpoint(directory)
                found = by_device.get(device)
                if found is None:
                    found = by_device[device] = _statvfs(mountpoint, directory)
            except OSError as error:
                found = Unmeasured(directory, f"{directory}: {error.strerror or error}")
            result[directory] = found
        return result

    def _mountpoint(self, directory: str) -> tuple[int, str]:
        device = Path(directory).stat().st_dev
        cached = self._mountpoints.get(directory)
        if cached is not None and cached[0] == device:
            return cached
        mountpoint = Path(directory).resolve()
        while mountpoint != mountpoint.parent:
            try:
                if mountpoint.parent.stat().st_dev != device:
                    break
            except OSError:  # a parent hidden from us: the highest we can see names it
                break
            mountpoint = mountpoint.parent
        self._mountpoints[directory] = (device, str(mountpoint))
        return device, str(mountpoint)

    def _forget_except(self, directories: Iterable[str]) -> None:
        keep = set(directories)
        for directory in self._mountpoints.keys() - keep:
            del self._mountpoints[directory]


def _statvfs(mountpoint: str, directory: str) -> FileSystem:
    st = os.statvfs(directory)
    return FileSystem(
        mountpoint=mountpoint, size=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize
    )
