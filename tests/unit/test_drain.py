"""A 200-domain simulated host drains completely under a two-window policy, with the
controller's invariants checked after every step."""

from __future__ import annotations

from pathlib import Path

from invariants import assert_invariants

from exporter.core.decisions import DiskState
from exporter.core.model import DiskKey
from exporter.daemon.controller import Controller, ControllerOptions
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import GiB, MiB, SimDisk
from exporter.policy.source import PolicySource

BASE = "/templates/os-base.qcow2"
APP = "/templates/app.qcow2"
POLICY = """\
version: 1
timezone: Europe/Berlin
defaults:
  bandwidth: 5MiB/s
  max_concurrent: 1
windows:
  nights: {days: daily, from: "22:00", to: "06:00", bandwidth: 10MiB/s, max_concurrent: 4}
  lunch: {days: weekdays, from: "12:00", to: "13:30", bandwidth: 8MiB/s, max_concurrent: 2}
rules:
  - name: databases
    domains: ["db-*"]
    action: ignore
  - name: web
    domains: ["web-*"]
    keep_base: "/templates/os-base*"
    windows: [nights]
    priority: 10
  - name: apps
    domains: ["app-*"]
    windows: [nights, lunch]
  - name: rest
    priority: -5
"""


def fleet() -> SimulatedHost:
    host = SimulatedHost(device_speed=200 * MiB)
    for i in range(200):
        kind = ("web", "app", "db", "misc")[i % 4]
        disks = [SimDisk("vda", f"/images/{kind}-{i}.qcow2", chain=(APP, BASE), size=GiB)]
        if i % 3 == 0:
            disks.append(SimDisk("vdb", f"/images/{kind}-{i}-data.qcow2", chain=(BASE,), size=GiB))
        host.add_domain(f"{kind}-{i}", disks)
    return host


def test_two_hundred_domains_drain_with_invariants_held_at_every_step(tmp_path: Path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    host = fleet()
    controller = Controller(
        host,
        PolicySource(policy_file),
        host.clock,
        # Coarse timers keep the step count (and the test) small; events still drive it.
        options=ControllerOptions(
            progress_interval=300, resync_interval=600, file_check_interval=3600
        ),
    )
    steps = 0
    original_step = controller.step

    def checked_step(wakes):
        nonlocal steps
        original_step(wakes)
        assert_invariants(controller, host)
        steps += 1

    controller.step = checked_step  # type: ignore[method-assign]
    controller.run(until=host.clock.monotonic() + 3 * 24 * 3600)

    decisions = controller.snapshot.plan.decisions
    by_rule: dict[str | None, set[DiskState]] = {}
    for decision in decisions:
        by_rule.setdefault(decision.rule, set()).add(decision.state)
    assert by_rule["web"] == {DiskState.INDEPENDENT}
    assert by_rule["apps"] == {DiskState.INDEPENDENT}
    assert by_rule["rest"] == {DiskState.INDEPENDENT}
    assert by_rule["databases"] == {DiskState.IGNORED}
    assert host.chain(DiskKey("web-0", "vda")) == (BASE,)  # keep_base kept
    assert host.chain(DiskKey("app-1", "vda")) == ()
    assert host.chain(DiskKey("db-2", "vda")) == (APP, BASE)  # ignored: untouched
    # Every selected disk needed one pull, except web data disks: their chain is already the
    # kept base alone.
    needed = {
        d.key
        for d in decisions
        if d.rule in {"apps", "rest"} or (d.rule, d.key.disk) == ("web", "vda")
    }
    assert controller.snapshot.counters.completed == dict.fromkeys(needed, 1)
    assert steps > 100
