"""A coordination service in memory, shared by several sessions: the fake for unit tests.

It keeps what etcd keeps for tooz: member keys and lock keys bound to a lease that expires
`ttl` seconds (of the injected clock's monotonic time) after its last heartbeat, and a
heartbeat on an expired lease starts a new empty one, as tooz's etcd driver does. `reachable`
and `partition` let a test cut the service off from everyone or from one member.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.clock import Clock
from exporter.fleet.session import CoordinationError


@dataclass
class _Lease:
    expires: float
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> capabilities
    slots: set[tuple[str, int]] = field(default_factory=set)


class MemoryService:
    def __init__(self, clock: Clock, ttl: float) -> None:
        self.clock = clock
        self.ttl = ttl
        self.reachable = True
        self.partitioned: set[str] = set()  # members that cannot reach the service
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}

    def session(self, member: str) -> MemorySession:
        with self._lock:
            self._check(member)
            self._leases[member] = _Lease(self.clock.monotonic() + self.ttl)
        return MemorySession(self, member)

    def holders(self, group: str) -> dict[int, str]:
        """Slot -> member, for live leases: what a test checks mutual exclusion against."""
        with self._lock:
            self._expire()
            return {
                slot: member
                for member, lease in self._leases.items()
                for (name, slot) in lease.slots
                if name == group
            }

    # -- used by MemorySession, under the lock ------------------------------------------------

    def _check(self, member: str) -> None:
        if not self.reachable or member in self.partitioned:
            raise CoordinationError("the in-memory service is cut off")

    def _expire(self) -> None:
        now = self.clock.monotonic()
        for member in [m for m, lease in self._leases.items() if lease.expires <= now]:
            del self._leases[member]

    def _call(self, member: str) -> _Lease | None:
        self._check(member)
        self._expire()
        return self._leases.get(member)


class MemorySession:
    def __init__(self, service: MemoryService, member: str) -> None:
        self._service = service
        self.member = member
        self._requests = 1

    @property
    def requests(self) -> int:
        return self._requests

    def _lease(self) -> _Lease:
        """This member's lease; a new empty one if it expired (its keys are gone)."""
        self._requests += 1
        service = self._service
        lease = service._call(self.member)
        if lease is None:
            lease = service._leases[self.member] = _Lease(service.clock.monotonic() + service.ttl)
        return lease

    def heartbeat(self) -> None:
        with self._service._lock:
            self._lease().expires = self._service.clock.monotonic() + self._service.ttl

    def join(self, group: str, capabilities: Mapping[str, Any]) -> None:
        with self._service._lock:
            self._lease().groups.setdefault(group, dict(capabilities))

    def leave(self, group: str) -> None:
        with self._service._lock:
            self._lease().groups.pop(group, None)

    def publish(self, group: str, capabilities: Mapping[str, Any]) -> None:
        with self._service._lock:
            lease = self._lease()
            if group not in lease.groups:
                raise CoordinationError(f"not a member of {group}")
            lease.groups[group] = dict(capabilities)

    def members(self, group: str) -> Mapping[str, Mapping[str, Any]]:
        with self._service._lock:
            self._lease()
            return {
                member: dict(lease.groups[group])
                for member, lease in self._service._leases.items()
                if group in lease.groups
            }

    def acquire(self, group: str, slot: int) -> bool:
        with self._service._lock:
            lease = self._lease()
            taken = any((group, slot) in other.slots for other in self._service._leases.values())
            if taken:
                return False
            lease.slots.add((group, slot))
            return True

    def release(self, group: str, slot: int) -> None:
        with self._service._lock:
            self._lease().slots.discard((group, slot))

    def close(self) -> None:
        with self._service._lock:
            if not self._service.reachable or self.member in self._service.partitioned:
                return
            self._service._leases.pop(self.member, None)
