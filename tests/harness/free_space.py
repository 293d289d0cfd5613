"""Free space as the guard's tests and benchmarks watch it: overlays on a small file system over
bases on a big one, and a sampler of that file system's free space and of a guest's state.

The sampler reads what QEMU (libvirt-qemu) may still use, statvfs f_bavail, every 50 ms on its
own connection, never the daemon's view.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from exporter.core.model import DiskKey
from harness.libvirt_lab import DiskSpec, Lab
from harness.libvirtd import URI
from harness.qemu_images import create_chain, create_overlay

SAMPLE_INTERVAL = 0.05


@dataclass
class FreeSpaceWatch:
    """Free bytes of a file system and a guest's (state, reason), sampled together."""

    path: Path
    guest: str
    free: list[int] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # time.monotonic() of each sample
    guest_states: list[tuple[int, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(self.guest)
            while not self.stop.wait(SAMPLE_INTERVAL):
                self.free.append(free_bytes(self.path))
                self.at.append(time.monotonic())
                state, why = dom.state()
                self.guest_states.append((state, why))
        finally:
            conn.close()

    def paused(self) -> bool:
        return any(state == libvirt.VIR_DOMAIN_PAUSED for state, _ in self.guest_states)

    def first_paused_at(self) -> float | None:
        return next(
            (t for t, (s, _) in zip(self.at, self.guest_states, strict=False)
             if s == libvirt.VIR_DOMAIN_PAUSED),
            None,
        )  # fmt: skip


@contextlib.contextmanager
def watching(path: Path, guest: str) -> Iterator[FreeSpaceWatch]:
    watch = FreeSpaceWatch(path, guest)
    thread = threading.Thread(target=watch.run, name="free-space", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        watch.stop.set()
        thread.join(5)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def floor_of(path: Path, percent: float = 10.0) -> int:
    """min_free's floor for `path`'s file system at `percent` (the policy's default 10%)."""
    st = os.statvfs(path)
    return math.ceil(st.f_blocks * st.f_frsize * percent / 100)


def overlays_with_data(
    lab: Lab, small: Path, labels: Sequence[str], fill_mib: int
) -> list[DiskKey]:
    """A paused domain per label whose vda is an overlay on `small` over a base (on the lab's
    own, big file system) holding `fill_mib` MiB: a full pull writes that much to `small`."""
    keys = []
    for label in labels:
        chain = create_chain(lab.folder, f"{label}-base", depth=0, size_mib=256, fill_mib=fill_mib)
        top = create_overlay(chain.base, small / f"{label}.qcow2")
        keys.append(DiskKey(lab.start(label, [DiskSpec("vda", top)]).name(), "vda"))
    return keys
