"""A Host that passes every call through and records what the controller did, and when.

Shared by the integration tests (what was called, in what order, with what) and the
benchmarks (how long after an event or boundary the controller acted). Lists are only
appended to, which is atomic, so another thread may read a copy while the controller writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from exporter.core.clock import Clock
from exporter.core.host import EventSink, Host, Sweep
from exporter.core.model import (
    BlockJob,
    DiskKey,
    FileSystem,
    HostEvent,
    Inspection,
    JobEvent,
    JobOutcome,
    Observation,
    Unmeasured,
)


@dataclass(frozen=True)
class Call:
    name: str  # start_pull, set_speed, abort
    key: DiskKey
    base: str | None
    bandwidth: int | None
    began: float  # time.monotonic() when the controller made the call: when it decided
    returned: float  # time.monotonic() when the call returned
    epoch: float  # the controller's clock when the call returned

    @property
    def took(self) -> float:
        """Seconds the call spent in the host (libvirt)."""
        return self.returned - self.began


@dataclass(frozen=True)
class SeenEvent:
    event: HostEvent
    at: float  # time.monotonic() when the host delivered it


class RecordingHost:
    """Wraps any `exporter.core.host.Host` (`inner`); records actions, events and observes.

    `only`: the domains observe() reports; None = all. The budget is host-wide, so another
    engineer's block job on the shared libvirtd takes a slot and its bandwidth from the
    daemon under test; tests that measure slots or speeds see only their own domains.
    """

    def __init__(self, inner: Host, clock: Clock, only: Iterable[str] | None = None) -> None:
        self.inner = inner
        self._clock = clock
        self._only = None if only is None else frozenset(only)
        self.calls: list[Call] = []
        self.events: list[SeenEvent] = []
        self.observes: list[tuple[float, float]] = []  # (monotonic start, seconds taken)
        self.inspections: list[tuple[float, float, tuple[str, ...]]] = []  # ... and domains

    # -- the Host protocol -----------------------------------------------------------------------

    def observe(self) -> Observation:
        began = time.monotonic()
        seen = self.inner.observe()
        self.observes.append((began, time.monotonic() - began))
        if self._only is None:
            return seen
        return replace(seen, domains=tuple(d for d in seen.domains if d.name in self._only))

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        return self.inner.refresh_jobs(keys)

    def sweep_jobs(self) -> Sweep:
        return self.inner.sweep_jobs()

    def file_systems(self, directories: Iterable[str]) -> Mapping[str, FileSystem | Unmeasured]:
        return self.inner.file_systems(directories)

    def inspect(self, domains: Iterable[str]) -> Mapping[str, Inspection]:
        wanted = list(domains)
        began = time.monotonic()
        found = self.inner.inspect(wanted)
        self.inspections.append((began, time.monotonic() - began, tuple(wanted)))
        return found

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        began = time.monotonic()
        self.inner.start_pull(key, base, bandwidth)
        self._record("start_pull", key, base, bandwidth, began)

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        began = time.monotonic()
        self.inner.set_speed(key, bandwidth)
        self._record("set_speed", key, None, bandwidth, began)

    def abort(self, key: DiskKey) -> None:
        began = time.monotonic()
        self.inner.abort(key)
        self._record("abort", key, None, None, began)

    def subscribe(self, sink: EventSink) -> None:
        def recorded(event: HostEvent) -> None:
            self.events.append(SeenEvent(event, time.monotonic()))
            sink(event)

        self.inner.subscribe(recorded)

    def close(self) -> None:
        self.inner.close()

    # -- what was recorded -----------------------------------------------------------------------

    def calls_of(self, name: str, key: DiskKey | None = None) -> list[Call]:
        return [c for c in list(self.calls) if c.name == name and key in (None, c.key)]

    def completed(self, keys: Iterable[DiskKey]) -> list[SeenEvent]:
        """The COMPLETED events delivered for these disks."""
        wanted = set(keys)
        return [
            seen
            for seen in list(self.events)
            if isinstance(seen.event, JobEvent)
            and seen.event.outcome is JobOutcome.COMPLETED
            and seen.event.key in wanted
        ]

    def _record(
        self, name: str, key: DiskKey, base: str | None, bandwidth: int | None, began: float
    ) -> None:
        now = time.monotonic()
        self.calls.append(Call(name, key, base, bandwidth, began, now, self._clock.time()))
