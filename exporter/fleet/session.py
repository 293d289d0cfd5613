"""What the fleet agent needs from a coordination service: one session of one member.

Two implementations: `exporter.fleet.tooz_session.ToozSession` (any tooz backend; etcd is the
one tested) and `exporter.fleet.memory.MemorySession` (in memory, for unit tests). Every call
is one round trip or a few; every failure to reach the service is a `CoordinationError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class CoordinationError(Exception):
    """The coordination service could not be reached or refused a call."""


class Session(Protocol):
    """A member's session: its membership and locks live while heartbeats keep its leases."""

    @property
    def requests(self) -> int:
        """Requests sent to the service so far."""
        ...

    def heartbeat(self) -> None:
        """Extend the leases of the membership and every held lock by the lease TTL."""
        ...

    def join(self, group: str, capabilities: Mapping[str, Any]) -> None:
        """Join `group` (created when missing); joining twice is not an error."""
        ...

    def leave(self, group: str) -> None: ...

    def publish(self, group: str, capabilities: Mapping[str, Any]) -> None:
        """Replace this member's capabilities in `group`."""
        ...

    def members(self, group: str) -> Mapping[str, Mapping[str, Any]]:
        """Every live member of `group` with its capabilities, in one read."""
        ...

    def acquire(self, group: str, slot: int) -> bool:
        """Take slot `slot` of `group` without waiting; False when another member holds it."""
        ...

    def release(self, group: str, slot: int) -> None: ...

    def close(self) -> None:
        """Release everything and end the session; errors are swallowed (best effort)."""
        ...
