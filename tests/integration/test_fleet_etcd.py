"""Daemons on several hosts share one storage group through a real 3-member etcd cluster.

Every test starts its own etcd members (free loopback ports, data dirs under tmp_path) and
its own daemons, and tears them all down whatever happens. Each daemon runs on a simulated
host (`sim://`); the first test adds one on the real libvirt. A sampler scrapes every daemon's
/metrics five times a second and sums what the daemons hold: pulls and speed limits in the
group may exceed the group's limits only for CONVERGENCE seconds after a change.

Leases are short (TTL seconds) to keep the tests short; the daemon's default is 30 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import libvirt
import pytest
from harness.daemon_process import DaemonProcess, parse_metrics
from harness.delay_proxy import delayed
from harness.etcd_cluster import EtcdCluster, etcd_cluster
from harness.fleet_lab import (
    GROUP,
    HELD_PULLS,
    FleetSampler,
    Sweep,
    coordination_args,
    fleet_policy,
    longest_violation,
    sim_daemons,
)
from harness.ground_truth import live_chain
from harness.libvirt_lab import Lab

from exporter.fleet.agent import hold_margin
from exporter.hosts.sim.records import MiB

TTL = 6.0
GROUP_MAX = 3
GROUP_BANDWIDTH = 24 * MiB
CONVERGENCE = 2.0  # seconds a sum may stay above a limit after a change (the bound)
DISK = 80 * MiB  # 10 s per pull at a third of the group
POLICY = fleet_policy(group_bandwidth="24MiB/s", group_max_concurrent=GROUP_MAX)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(tmp_path / "etcd") as started:
        yield started


def daemons_on(
    cluster: EtcdCluster, tmp_path: Path, count: int = 3, url: str | None = None
) -> contextlib.AbstractContextManager[list[DaemonProcess]]:
    return sim_daemons(
        tmp_path / "hosts",
        count,
        url or cluster.gateway_url,
        POLICY,
        domains=4,
        disk_size=DISK,
        ttl=TTL,
    )


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` holds; fails naming `what` after `timeout`."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


def held_pulls(daemons: Sequence[DaemonProcess]) -> float:
    """Group pulls the daemons that answer hold now, summed."""
    labels = frozenset({("group", GROUP)})
    total = 0.0
    for daemon in daemons:
        body = daemon.try_scrape() if daemon.running() else None
        if body is not None:
            total += parse_metrics(body).get((HELD_PULLS, labels), 0.0)
    return total


def coordination_lost_aborts(daemons: Sequence[DaemonProcess]) -> float:
    total = 0.0
    for daemon in daemons:
        for (name, labels), value in daemon.samples().items():
            if name == "blockpull_jobs_aborted_total" and ("reason", "coordination_lost") in labels:
                total += value
    return total


def assert_within_limits(sweeps: Sequence[Sweep]) -> None:
    assert sweeps, "no sweep was taken"
    longest = longest_violation(sweeps, GROUP_MAX, GROUP_BANDWIDTH)
    worst = max(sweeps, key=lambda s: (s.pulls, s.bandwidth))
    assert longest <= CONVERGENCE, (
        f"over the group's limits for {longest:.1f} s; worst sweep: {worst.pulls} pulls, "
        f"{worst.bandwidth / MiB:.1f} MiB/s"
    )


def mean_utilisation(sweeps: Sequence[Sweep]) -> float:
    return sum(min(s.bandwidth, GROUP_BANDWIDTH) for s in sweeps) / len(sweeps) / GROUP_BANDWIDTH


def group_full(daemons: Sequence[DaemonProcess]) -> Callable[[], bool]:
    return lambda: held_pulls(daemons) == GROUP_MAX


def test_daemons_on_simulated_and_real_hosts_share_a_group_within_its_limits(
    cluster: EtcdCluster,
    tmp_path: Path,
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    image_folder: Path,
) -> None:
    [(key, _)] = domains.start_with_chains("fleet", [48]).items()
    real_policy = fleet_policy(
        group_bandwidth="24MiB/s",
        group_max_concurrent=GROUP_MAX,
        host_max_concurrent=500,  # other suites' jobs on this libvirtd take host slots
        domains=[key.domain],
        paths=[f"{image_folder}/*"],
    )
    real = DaemonProcess(
        tmp_path / "real", "qemu:///system", coordination_args(cluster.gateway_url, TTL)
    )
    real.workdir.mkdir()
    real.policy.write_text(real_policy)
    with daemons_on(cluster, tmp_path) as sims:
        everyone = [*sims, real]
        try:
            real.start()
            with FleetSampler(everyone) as sampler:
                began = time.monotonic()
                wait_for("the real disk pulled", lambda: live_chain(libvirt_conn, key) == (), 90)
                time.sleep(max(0.0, began + 12 - time.monotonic()))
        finally:
            real.stop()
    assert_within_limits(sampler.sweeps)
    busy = [s for s in sampler.sweeps if s.started < began + 12]
    assert mean_utilisation(busy) >= 0.85
    assert max(s.up for s in sampler.sweeps) == len(everyone)


def test_a_killed_daemons_share_passes_on_within_the_lease_ttl(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    with daemons_on(cluster, tmp_path) as daemons:
        victim, survivors = daemons[0], daemons[1:]
        wait_for("the victim holds a slot", lambda: held_pulls([victim]) >= 1, 30)
        wait_for("the group is full", group_full(daemons), 30)
        with FleetSampler(survivors) as sampler:
            victim.kill()
            handover = wait_for("survivors fill the group", group_full(survivors), TTL + 10)
    assert handover <= TTL + CONVERGENCE
    assert_within_limits(sampler.sweeps)


def test_losing_the_etcd_leader_stops_no_group_pull(cluster: EtcdCluster, tmp_path: Path) -> None:
    with daemons_on(cluster, tmp_path) as daemons:
        wait_for("the group is full", group_full(daemons), 30)
        with FleetSampler(daemons) as sampler:
            cluster.stop(cluster.leader())
            time.sleep(TTL + 2)
            wait_for("every daemon up again", lambda: sampler.sweeps[-1].up == 3, 10)
        lost = coordination_lost_aborts(daemons)
    assert lost == 0
    assert_within_limits(sampler.sweeps)
    assert mean_utilisation(sampler.sweeps) >= 0.8


def test_a_frozen_etcd_stops_group_pulls_within_the_lease_and_they_resume(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    with daemons_on(cluster, tmp_path) as daemons:
        wait_for("the group is full", group_full(daemons), 30)
        with FleetSampler(daemons) as sampler:
            frozen_at = time.monotonic()
            cluster.freeze()
            try:
                wait_for("every daemon sees it down", lambda: sampler.sweeps[-1].up == 0, TTL)
                still_running = sampler.sweeps[-1].pulls
                wait_for("group pulls stopped", lambda: held_pulls(daemons) == 0, TTL + 2)
                stopped = time.monotonic() - frozen_at
            finally:
                cluster.thaw()
            resumed = wait_for("group pulls resumed", group_full(daemons), 30)
        lost = coordination_lost_aborts(daemons)
    assert still_running == GROUP_MAX  # running pulls went on while the lease lasted
    assert TTL - hold_margin(TTL) - TTL / 6 - 1 <= stopped <= TTL
    assert lost >= GROUP_MAX
    assert resumed <= 20
    assert_within_limits(sampler.sweeps)


def test_network_delay_to_etcd_keeps_the_group_within_its_limits(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    with delayed(cluster.gateway_port, 0.1) as proxy:  # +200 ms per request
        url = f"etcd3+http://127.0.0.1:{proxy.port}"
        with daemons_on(cluster, tmp_path, url=url) as daemons:
            wait_for("the group is full", group_full(daemons), 30)
            wait_for("every daemon up", lambda: FleetSampler(daemons).sweep().up == 3, 15)
            with FleetSampler(daemons) as sampler:
                time.sleep(12)
    assert_within_limits(sampler.sweeps)
    assert min(s.up for s in sampler.sweeps) == 3
    assert mean_utilisation(sampler.sweeps) >= 0.8
