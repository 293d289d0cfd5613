"""The controller with the fleet agent on the in-memory coordination service: group pulls wait
for slots, follow the group's share, and stop when the lease may be gone. The simulated host's
clock drives everything; agent rounds are run by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.decisions import AbortReason
from exporter.core.model import DiskKey
from exporter.daemon.controller import Controller
from exporter.fleet.agent import FleetAgent, hold_margin
from exporter.fleet.memory import MemoryService
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import MiB, SimDisk
from exporter.metrics.renderer import MetricsRenderer
from exporter.policy.source import PolicySource

TTL = 10.0
POLICY = """\
version: 1
defaults: {bandwidth: unlimited, max_concurrent: 3}
rules:
  - name: all
shared:
  filer-a: {paths: ["/mnt/filer-a/*"], bandwidth: 30MiB/s, max_concurrent: 2}
"""


@pytest.fixture
def host() -> SimulatedHost:
    host = SimulatedHost()
    for n in range(3):
        disk = SimDisk("vda", f"/images/vm-{n}.qcow2", ("/mnt/filer-a/t.qcow2",), 1000 * MiB)
        host.add_domain(f"vm-{n}", [disk])
    local = SimDisk("vda", "/images/local.qcow2", ("/images/t.qcow2",), 100_000 * MiB)
    host.add_domain("local", [local])
    return host


@pytest.fixture
def service(host: SimulatedHost) -> MemoryService:
    return MemoryService(host.clock, TTL)


def fleet_controller(
    host: SimulatedHost, service: MemoryService, tmp_path: Path
) -> tuple[Controller, FleetAgent]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    agent = FleetAgent(service.session, "host-a", TTL, host.clock)
    controller = Controller(
        host, PolicySource(tmp_path / "policy.yaml"), host.clock, coordinator=agent
    )
    return controller, agent


def wakes(controller: Controller) -> list[object]:
    """Whatever woke the controller meanwhile, as its loop would hand it to `step`."""
    queued = []
    while not controller.inbox.empty():
        queued.append(controller.inbox.get_nowait())
    return queued


def settle(controller: Controller, agent: FleetAgent) -> None:
    """A plan, an agent round, and the plan that the round's wake-up triggers."""
    controller.step([])
    agent.round()
    controller.step(wakes(controller))


def group_jobs(host: SimulatedHost) -> dict[DiskKey, int]:
    return {k: j.bandwidth for k, j in host.running_jobs().items() if k.domain.startswith("vm")}


def test_group_pulls_start_once_the_agent_holds_their_slots(host, service, tmp_path):
    controller, agent = fleet_controller(host, service, tmp_path)
    controller.step([])
    assert group_jobs(host) == {}  # no round yet: nothing of the group starts
    assert DiskKey("local", "vda") in host.running_jobs()  # outside the group: at once
    agent.round()
    controller.step(wakes(controller))
    assert group_jobs(host) == {DiskKey(f"vm-{n}", "vda"): 15 * MiB for n in range(2)}


def test_group_pulls_run_on_while_the_lease_lasts_then_stop_as_coordination_lost(
    host, service, tmp_path
):
    controller, agent = fleet_controller(host, service, tmp_path)
    settle(controller, agent)
    lease_end = agent.lease_end(host.clock.monotonic())
    assert lease_end == pytest.approx(host.clock.monotonic() + TTL - hold_margin(TTL))
    service.reachable = False
    agent.round()  # fails: nothing new may start, running pulls go on
    controller.run(until=lease_end - 0.5)
    assert len(group_jobs(host)) == 2
    controller.run(until=lease_end + 0.1)
    assert group_jobs(host) == {}
    aborted = controller.snapshot.counters.aborted
    assert aborted[(DiskKey("vm-0", "vda"), AbortReason.COORDINATION_LOST)] == 1
    assert DiskKey("local", "vda") in host.running_jobs()  # outside the group: untouched


def test_metrics_show_what_this_host_holds_and_sees_of_the_group(host, service, tmp_path):
    controller, agent = fleet_controller(host, service, tmp_path)
    settle(controller, agent)
    text = MetricsRenderer("test", process_metrics=False).render(controller.snapshot).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    group = (("group", "filer-a"),)
    assert values[("blockpull_coordination_up", ())] == 1.0
    assert values[("blockpull_shared_group_held_pulls", group)] == 2.0
    assert values[("blockpull_shared_group_held_bandwidth_bytes_per_second", group)] == 30 * MiB
    assert values[("blockpull_shared_group_cluster_demand", group)] == 3.0
    assert values[("blockpull_coordination_requests_total", ())] > 0


def test_the_readme_fleet_table_lists_exactly_the_coordination_metrics(host, service, tmp_path):
    controller, agent = fleet_controller(host, service, tmp_path)
    settle(controller, agent)
    text = MetricsRenderer("test", process_metrics=False).render(controller.snapshot).decode()
    exposed = {
        (f"{f.name}_total" if f.type == "counter" else f.name, f.type)
        for f in text_string_to_metric_families(text)
        if f.name.startswith(("blockpull_coordination", "blockpull_shared_group"))
    }
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Fleet: one budget for many hosts", 1)[1].split("\n## ", 1)[0]
    documented = {
        (cells[0].strip("` "), cells[1].strip())
        for line in section.splitlines()
        if line.startswith("| `blockpull_")
        for cells in [line.strip("|").split("|")]
    }
    assert documented == exposed
