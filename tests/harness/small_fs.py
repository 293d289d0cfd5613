"""A small file system of its own for a test: ext4 in a file, loop-mounted in the lab's folder.

ext4 keeps 5% for root, so QEMU (libvirt-qemu) gets ENOSPC before `df` shows 0; the guard
counts what an unprivileged writer may use (statvfs f_bavail), as here.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from harness.qemu_images import run


@contextlib.contextmanager
def small_file_system(folder: Path, size_mib: int, name: str = "small") -> Iterator[Path]:
    """`folder/name`, an empty ext4 of `size_mib` MiB that QEMU can enter; unmounted (and its
    image removed) on the way out, even on failure. Stop whatever runs from it first
    (Lab.remove_domains); a mount still busy is detached lazily, so nothing stays mounted."""
    image = folder / f"{name}.ext4"
    mountpoint = folder / name
    run("truncate", "-s", f"{size_mib}M", image)
    run("mkfs.ext4", "-q", "-F", image)
    mountpoint.mkdir()
    run("mount", "-o", "loop", image, mountpoint)
    try:
        mountpoint.chmod(0o755)
        (mountpoint / "lost+found").rmdir()
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
        image.unlink(missing_ok=True)
