"""One storage budget shared by many hosts: this host's member of each shared group.

`open_coordinator` gives the daemon an `exporter.core.coordinator.Coordinator` on a tooz
backend URL (`etcd3+http://127.0.0.1:2379`, ...); the design and its failure analysis are in
`exporter.fleet.agent` and the README's fleet section.
"""

from __future__ import annotations

import socket

from exporter.core.clock import Clock
from exporter.fleet.agent import FleetAgent

DEFAULT_LEASE_TTL = 30


def url_problem(url: str) -> str | None:
    """Why tooz cannot use `url` (unknown backend, malformed), or None; connects to nothing."""
    from tooz import coordination

    try:
        coordination.get_coordinator(url, b"blockpull-exporter-check")
    except Exception as error:  # stevedore, tooz and the driver each raise their own kind
        return f"{type(error).__name__}: {error}"
    return None


def open_coordinator(url: str, ttl: int, clock: Clock, name: str | None = None) -> FleetAgent:
    """A started agent; it connects on its own thread, so an unreachable service is no error."""
    from exporter.fleet.tooz_session import ToozSession

    agent = FleetAgent(
        lambda member: ToozSession(url, member, ttl), name or socket.gethostname(), ttl, clock
    )
    agent.start()
    return agent
