"""The one protocol between the controller and a hypervisor host.

Two implementations: `exporter.hosts.libvirt.host.LibvirtHost` (real) and
`exporter.hosts.sim.host.SimulatedHost` (in-memory, for tests and benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from exporter.core.model import (
    BlockJob,
    DiskKey,
    FileSystem,
    HostEvent,
    Inspection,
    Observation,
    Unmeasured,
)

EventSink = Callable[[HostEvent], None]


@dataclass(frozen=True)
class Sweep:
    found: bool  # a job turned up that the last observe did not show
    next_in: float | None  # seconds until the next part is due; None: observe shows every job


class Host(Protocol):
    def observe(self) -> Observation:
        """Every domain, its state, each disk's chain and its running block job.

        Raises HostError(CONNECTION) when the host cannot be reached.
        """
        ...

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        """Progress of the named disks' jobs only: cost in proportion to `keys`."""
        ...

    def sweep_jobs(self) -> Sweep:
        """Look for block jobs somebody else started, the part of the host that is due
        (libvirt announces no job that starts); the next observe shows what it found. The
        controller calls it again `Sweep.next_in` seconds later.

        Raises HostError(CONNECTION) when the host cannot be reached.
        """
        ...

    def file_systems(self, directories: Iterable[str]) -> Mapping[str, FileSystem | Unmeasured]:
        """The file systems of these image directories now (observe measures them too)."""
        ...

    def inspect(self, domains: Iterable[str]) -> Mapping[str, Inspection]:
        """Read the named domains in full, right before a pull may start there: the block job
        of every disk and what each backing chain holds. A domain gone meanwhile is left out.

        Raises HostError(CONNECTION) when the host cannot be reached.
        """
        ...

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        """Start a pull into the top image; down to `base` (kept) when given.

        `bandwidth` in bytes/s, None = unlimited. Raises HostError.
        """
        ...

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None: ...

    def abort(self, key: DiskKey) -> None: ...

    def subscribe(self, sink: EventSink) -> None:
        """Deliver future host events to `sink`, from any thread. Replaces a previous sink."""
        ...

    def close(self) -> None: ...
