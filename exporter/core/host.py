"""The one protocol between the controller and a hypervisor host.

Two implementations: `exporter.hosts.libvirt.host.LibvirtHost` (real) and
`exporter.hosts.sim.host.SimulatedHost` (in-memory, for tests and benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from exporter.core.model import BlockJob, DiskKey, HostEvent, Observation

EventSink = Callable[[HostEvent], None]


class Host(Protocol):
    def observe(self) -> Observation:
        """Every domain, its state, each disk's chain and its running block job.

        Raises HostError(CONNECTION) when the host cannot be reached.
        """
        ...

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        """Progress of the named disks' jobs only: cost in proportion to `keys`."""
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
