"""Open a host by URI: `sim:///path.json` is the simulated host, anything else is libvirt."""

from __future__ import annotations

from exporter.core.clock import Clock
from exporter.core.host import Host

DEFAULT_URI = "qemu:///system"


def open_host(uri: str, clock: Clock) -> Host:
    from exporter.hosts.sim.state_file import is_sim_uri, open_sim_host

    if is_sim_uri(uri):
        return open_sim_host(uri, clock)
    from exporter.hosts.libvirt.host import LibvirtHost  # imports libvirt only when it is needed

    return LibvirtHost(uri)
