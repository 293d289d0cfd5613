"""The controller and the production guards, on the simulated host: holds, other hands on the
same disks, free space, one pull per domain read in full, and series of domains that are gone.
Time is the simulated host's own."""

from __future__ import annotations

from pathlib import Path

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.holds import Hold
from exporter.core.host import Sweep
from exporter.core.model import DiskKey, JobType
from exporter.daemon.controller import Controller, ControllerOptions
from exporter.daemon.hold_store import HoldStore
from exporter.daemon.state_store import StateStore
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import MiB, SimDisk
from exporter.policy.source import PolicySource

BASE = "/templates/os-base.qcow2"
IMAGES = "/images"
WEB1 = DiskKey("web-1", "vda")
WEB2 = DiskKey("web-2", "vda")

POLICY = """\
version: 1
timezone: UTC
defaults:
  bandwidth: 10MiB/s
  max_concurrent: {max_concurrent}
  retry: {{max_attempts: 2, backoff: 1m, max_backoff: 10m}}
  min_free: 10%
rules:
  - name: web
    domains: ["web-*"]
"""


def host_with(count: int = 1, size: int = 100 * MiB, disks: int = 1) -> SimulatedHost:
    host = SimulatedHost()
    for i in range(1, count + 1):
        specs = [
            SimDisk(f"vd{chr(ord('a') + d)}", f"{IMAGES}/web-{i}-{d}.qcow2", (BASE,), size)
            for d in range(disks)
        ]
        host.add_domain(f"web-{i}", specs)
    return host


def controller_for(
    host: SimulatedHost, tmp_path: Path, max_concurrent: int = 2, **options: float
) -> Controller:
    policy = tmp_path / "policy.yaml"
    if not policy.exists():
        policy.write_text(POLICY.format(max_concurrent=max_concurrent))
    return Controller(
        host,
        PolicySource(policy),
        host.clock,
        StateStore(tmp_path / "state"),
        ControllerOptions(**options),
        holds=HoldStore(tmp_path / "state"),
    )


def run_for(controller: Controller, host: SimulatedHost, seconds: float) -> None:
    controller.run(until=host.clock.monotonic() + seconds)


def states(controller: Controller) -> dict[DiskKey, DiskState]:
    assert controller.snapshot.plan is not None
    return {d.key: d.state for d in controller.snapshot.plan.decisions}


def hold(tmp_path: Path, host: SimulatedHost, glob: str, seconds: float = 3600) -> None:
    now = host.now()
    placed = Hold(glob, now, now + seconds, "snapshot", "ops")
    HoldStore(tmp_path / "state").update(lambda kept: (*kept, placed), now)


def aborted(controller: Controller, key: DiskKey, reason: AbortReason) -> int:
    return controller.snapshot.counters.aborted.get((key, reason), 0)


# -- holds ----------------------------------------------------------------------------------


def test_a_hold_aborts_the_daemons_pull_within_a_second(tmp_path):
    host = host_with()
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    assert host.job(WEB1) is not None
    hold(tmp_path, host, "web-*")
    run_for(controller, host, 0.5)
    assert host.job(WEB1) is None
    assert aborted(controller, WEB1, AbortReason.HELD) == 1
    assert states(controller)[WEB1] is DiskState.HELD


def test_a_held_domain_gets_no_pull_until_the_hold_ends(tmp_path):
    host = host_with()
    hold(tmp_path, host, "web-1", seconds=120)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 119)
    assert controller.snapshot.counters.started.get(WEB1, 0) == 0
    run_for(controller, host, 2)
    assert host.job(WEB1) is not None


def test_release_resumes_the_pulls_within_a_second(tmp_path):
    host = host_with()
    hold(tmp_path, host, "web-1")
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 5)
    HoldStore(tmp_path / "state").update(lambda kept: (), host.now())
    run_for(controller, host, 0.5)
    assert host.job(WEB1) is not None


def test_holds_survive_a_restart_of_the_daemon(tmp_path):
    host = host_with()
    hold(tmp_path, host, "web-1")
    run_for(controller_for(host, tmp_path), host, 5)
    again = controller_for(host, tmp_path)
    run_for(again, host, 5)
    assert host.job(WEB1) is None
    assert states(again)[WEB1] is DiskState.HELD


def test_an_unreadable_holds_file_holds_every_domain(tmp_path):
    host = host_with()
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    holds = HoldStore(tmp_path / "state")
    holds.directory.mkdir(parents=True, exist_ok=True)
    holds.path.write_text("{broken")
    run_for(controller, host, 0.5)
    assert host.job(WEB1) is None
    assert controller.snapshot.holds.error is not None


# -- other hands ----------------------------------------------------------------------------


def test_a_pull_aborted_by_hand_is_counted_external_and_waits_for_the_backoff(tmp_path):
    host = host_with(size=1000 * MiB)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    host.abort(WEB1)  # `virsh blockjob --abort`, by somebody else
    run_for(controller, host, 50)
    assert aborted(controller, WEB1, AbortReason.EXTERNAL) == 1
    assert host.job(WEB1) is None
    assert states(controller)[WEB1] is DiskState.BACKOFF
    run_for(controller, host, 15)
    assert host.job(WEB1) is not None


def test_the_backoff_after_a_second_hand_abort_is_twice_as_long(tmp_path):
    host = host_with(size=10_000 * MiB)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    host.abort(WEB1)
    run_for(controller, host, 65)  # backoff 1m, then started again
    host.abort(WEB1)
    run_for(controller, host, 110)
    assert host.job(WEB1) is None
    run_for(controller, host, 15)
    assert host.job(WEB1) is not None
    assert aborted(controller, WEB1, AbortReason.EXTERNAL) == 2


def test_a_speed_set_by_hand_above_the_share_is_put_back_at_the_next_refresh(tmp_path):
    host = host_with(size=1000 * MiB)
    controller = controller_for(host, tmp_path, progress_interval=2.0)
    run_for(controller, host, 1)
    host.set_speed(WEB1, 80 * MiB)  # `virsh blockjob --bandwidth`, by somebody else
    run_for(controller, host, 2.5)
    job = host.job(WEB1)
    assert job is not None
    assert job.bandwidth == 10 * MiB


def test_a_reload_that_ignores_a_disk_aborts_the_daemons_pull_within_a_second(tmp_path):
    host = host_with(size=1000 * MiB)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy.read_text() + "    exclude: {domains: [web-1]}\n")
    run_for(controller, host, 1.1)
    assert host.job(WEB1) is None
    assert aborted(controller, WEB1, AbortReason.DESELECTED) == 1


def test_the_series_of_a_domain_that_no_longer_exists_go_within_one_resync(tmp_path):
    host = host_with(count=2, size=10 * MiB)
    controller = controller_for(host, tmp_path, resync_interval=30.0)
    run_for(controller, host, 10)
    assert controller.snapshot.counters.completed.get(WEB1) == 1
    host.remove_domain("web-1")
    run_for(controller, host, 30)
    counters = controller.snapshot.counters
    assert all(WEB1 not in c for c in (counters.started, counters.completed, counters.failed))
    assert controller.snapshot.counters.completed.get(WEB2) == 1


# -- free space -----------------------------------------------------------------------------


def test_pulls_never_take_a_file_system_below_min_free(tmp_path):
    host = host_with(count=3, size=150 * MiB)
    host.add_file_system(IMAGES, size=1000 * MiB, free=500 * MiB)  # the floor: 100 MiB
    controller = controller_for(host, tmp_path, max_concurrent=3)
    lowest = 500 * MiB
    for _ in range(120):
        run_for(controller, host, 1)
        lowest = min(lowest, host.file_system_free(IMAGES))
    assert lowest >= 100 * MiB
    waiting = [k for k, s in states(controller).items() if s is DiskState.WAITING_SPACE]
    assert len(waiting) == 1  # 450 MiB to copy, 400 MiB to spare: the last one waits


def test_a_pull_is_aborted_when_something_else_fills_its_file_system(tmp_path):
    host = host_with(size=1000 * MiB)
    host.add_file_system(IMAGES, size=10_000 * MiB, free=5000 * MiB)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    host.fill_file_system(IMAGES, 4500 * MiB)  # a guest writes: 490 MiB left, floor 1000 MiB
    run_for(controller, host, 2.5)  # found at the next progress refresh
    assert host.job(WEB1) is None
    assert aborted(controller, WEB1, AbortReason.LOW_SPACE) == 1
    assert states(controller)[WEB1] is DiskState.WAITING_SPACE
    host.fill_file_system(IMAGES, -4500 * MiB)  # freed again
    run_for(controller, host, 31)
    assert host.job(WEB1) is not None


# -- one pull per domain, read in full ----------------------------------------------------------


def test_every_disk_of_a_domain_is_read_before_a_pull_starts_there(tmp_path):
    host = host_with()
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 1)
    assert host.calls()["inspect"] == 1
    assert host.job(WEB1) is not None


def test_no_pull_starts_in_a_domain_where_somebody_else_runs_a_job(tmp_path):
    host = host_with(disks=2, size=1000 * MiB)
    host.add_foreign_job(DiskKey("web-1", "vdb"), JobType.COMMIT, 10 * MiB)
    controller = controller_for(host, tmp_path)
    run_for(controller, host, 5)
    assert host.job(WEB1) is None
    assert "runs a commit job" in next(
        d.reason for d in controller.snapshot.plan.decisions if d.key == WEB1
    )


class _SweepingHost(SimulatedHost):
    """A host whose sweep turns up a job when told to, and asks for the next in 5 s."""

    def __init__(self) -> None:
        super().__init__()
        self.turn_up = False
        self.sweeps: list[float] = []

    def sweep_jobs(self) -> Sweep:
        self.sweeps.append(self.now())
        found, self.turn_up = self.turn_up, False
        return Sweep(found=found, next_in=5.0)


def test_sweeps_come_when_the_host_asks_and_a_job_found_is_reconciled_at_once(tmp_path):
    host = _SweepingHost()
    host.add_domain("web-1", [SimDisk("vda", f"{IMAGES}/web-1.qcow2")])  # nothing to pull
    controller = controller_for(host, tmp_path, resync_interval=300.0)
    run_for(controller, host, 12)
    gaps = [b - a for a, b in zip(host.sweeps, host.sweeps[1:], strict=False)]
    assert gaps and all(abs(gap - 5.0) < 0.01 for gap in gaps)
    quiet = host.calls()["observe"]
    run_for(controller, host, 5)
    assert host.calls()["observe"] == quiet  # a sweep that finds nothing costs no reconcile
    host.turn_up = True
    run_for(controller, host, 5)
    assert host.calls()["observe"] == quiet + 1
