"""Hosts sharing a storage group, each with its own daemon: for the fleet tests, benchmark and
demo. Simulated hosts (`sim://` files) carry the numbers; the real libvirt host joins them in
the tests.

`sim_host_file(...)` writes a simulated host whose disks all sit on overlays of one template in
the group's folder. `fleet_policy(...)` is the policy every daemon of a lab runs: one rule, one
shared group. `FleetSampler` scrapes every daemon's /metrics several times a second on a
thread and keeps, per sweep, the sums over daemons that the group's invariants are about.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from exporter.core.model import DomainState
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import MiB, SimDisk
from exporter.hosts.sim.state_file import save_sim_host
from harness.daemon_process import DaemonProcess, parse_metrics

GROUP = "filer-a"
GROUP_FOLDER = "/mnt/filer-a"
TEMPLATE = f"{GROUP_FOLDER}/template.qcow2"
HELD_PULLS = "blockpull_shared_group_held_pulls"
HELD_BANDWIDTH = "blockpull_shared_group_held_bandwidth_bytes_per_second"
COORDINATION_UP = "blockpull_coordination_up"
START_TOGETHER = 10  # daemons started at once: imports cost a CPU second each on 2 cores


def sim_host_file(
    path: Path, domains: int, disk_size: int, *, prefix: str = "vm", device_speed: int = 1024 * MiB
) -> Path:
    """A simulated host with `domains` running domains, each one disk on the group's template."""
    host = SimulatedHost(start=time.time(), device_speed=device_speed)
    for n in range(domains):
        disk = SimDisk("vda", f"/var/lib/libvirt/images/{prefix}-{n}.qcow2", (TEMPLATE,), disk_size)
        host.add_domain(f"{prefix}-{n}", [disk], state=DomainState.RUNNING)
    save_sim_host(path, host)
    return path


def fleet_policy(
    *,
    group_bandwidth: str,
    group_max_concurrent: int,
    host_bandwidth: str = "unlimited",
    host_max_concurrent: int = 4,
    domains: Sequence[str] = ("*",),
    paths: Sequence[str] = (f"{GROUP_FOLDER}/*",),
) -> str:
    """One rule pulling `domains` (exact names on a real libvirt: other suites share it), and
    the shared group on `paths`."""
    names = ", ".join(f'"{d}"' for d in domains)
    globs = ", ".join(f'"{p}"' for p in paths)
    return (
        "version: 1\n"
        "defaults:\n"
        f"  bandwidth: {host_bandwidth}\n"
        f"  max_concurrent: {host_max_concurrent}\n"
        "  retry: {max_attempts: 5, backoff: 2s, max_backoff: 2s}\n"
        "rules:\n"
        "  - name: fleet\n"
        f"    domains: [{names}]\n"
        "shared:\n"
        f"  {GROUP}:\n"
        f"    paths: [{globs}]\n"
        f"    bandwidth: {group_bandwidth}\n"
        f"    max_concurrent: {group_max_concurrent}\n"
    )


def coordination_args(url: str, ttl: float) -> list[str]:
    return ["--coordination.url", url, "--coordination.lease-ttl", f"{ttl:g}"]


@contextlib.contextmanager
def sim_daemons(
    workdir: Path,
    count: int,
    url: str,
    policy: str,
    *,
    domains: int,
    disk_size: int,
    ttl: float,
    log_level: str = "info",
    extra_args: Sequence[str] = (),
) -> Iterator[list[DaemonProcess]]:
    """`count` daemons, each on its own simulated host of `domains` group disks, all in one
    group through `url`; every one of them stopped on the way out."""
    daemons: list[DaemonProcess] = []
    try:
        for n in range(count):
            folder = workdir / f"host-{n}"
            host = sim_host_file(folder / "host.json", domains, disk_size, prefix=f"h{n}")
            args = [*coordination_args(url, ttl), *extra_args]
            daemon = DaemonProcess(
                folder, f"sim://{host}", args, log_level=log_level, own_domains_only=False
            )
            daemon.policy.write_text(policy)
            daemons.append(daemon)
        with ThreadPoolExecutor(max_workers=min(count, START_TOGETHER)) as pool:
            list(pool.map(lambda daemon: daemon.start(), daemons))  # raises the first failure
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


@dataclass(frozen=True)
class Sweep:
    """One scrape of every daemon, taken one after the other as fast as they answer."""

    started: float  # monotonic
    finished: float
    pulls: float  # held group pulls summed over the daemons that answered
    bandwidth: float  # their group speed limits, summed
    answered: int
    up: int  # daemons reporting blockpull_coordination_up 1


@dataclass
class FleetSampler:
    daemons: Sequence[DaemonProcess]
    interval: float = 0.2  # five sweeps a second
    sweeps: list[Sweep] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> FleetSampler:
        self.sweeps.append(self.sweep())  # `sweeps[-1]` is there from the start
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.sweeps.append(self.sweep())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def sweep(self) -> Sweep:
        started = time.monotonic()
        pulls = bandwidth = 0.0
        answered = up = 0
        labels = frozenset({("group", GROUP)})
        for daemon in self.daemons:
            body = daemon.try_scrape() if daemon.running() else None
            if body is None:
                continue
            samples = parse_metrics(body)
            answered += 1
            pulls += samples.get((HELD_PULLS, labels), 0.0)
            bandwidth += samples.get((HELD_BANDWIDTH, labels), 0.0)
            up += samples.get((COORDINATION_UP, frozenset()), 0.0) == 1.0
        return Sweep(started, time.monotonic(), pulls, bandwidth, answered, up)

    def since(self, moment: float) -> list[Sweep]:
        return [s for s in list(self.sweeps) if s.started >= moment]


def longest_violation(sweeps: Sequence[Sweep], max_pulls: float, max_bandwidth: float) -> float:
    """Seconds of the longest run of consecutive sweeps over either limit (0: never over)."""
    longest = 0.0
    began: float | None = None
    for sweep in sweeps:
        over = sweep.pulls > max_pulls or sweep.bandwidth > max_bandwidth
        if over and began is None:
            began = sweep.started
        elif not over and began is not None:
            longest = max(longest, sweep.started - began)
            began = None
    if began is not None:
        longest = max(longest, sweeps[-1].finished - began)
    return longest
