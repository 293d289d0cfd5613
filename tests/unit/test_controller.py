"""The controller on the simulated host: outcomes counted once, windows, retries, reloads,
restarts and faults. Time is the simulated host's own, so hours pass in milliseconds."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey, JobType
from exporter.daemon.controller import (
    MAX_CONNECT_BACKOFF,
    STILL_DOWN_WARNING_SECONDS,
    Controller,
    ControllerOptions,
    Reload,
    Shutdown,
)
from exporter.daemon.state_store import StateStore
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import MiB, SimDisk
from exporter.policy.source import PolicySource

BASE = "/templates/os-base.qcow2"
APP = "/templates/app.qcow2"

POLICY = """\
version: 1
timezone: UTC
defaults:
  bandwidth: {bandwidth}
  max_concurrent: {max_concurrent}
  outside_windows: {outside}
  retry: {{max_attempts: 3, backoff: 1m, max_backoff: 10m}}
windows:
  early: {{days: daily, from: "01:00", to: "02:00"}}
rules:
  - name: databases
    domains: ["db-*"]
    action: ignore
  - name: web
    domains: ["web-*"]
"""


def write_policy(
    path: Path,
    *,
    bandwidth: str = "100MiB/s",
    max_concurrent: int = 2,
    outside: str = "pause",
    windows: str | None = None,
) -> Path:
    text = POLICY.format(bandwidth=bandwidth, max_concurrent=max_concurrent, outside=outside)
    path.write_text(text + (f"    windows: {windows}\n" if windows else ""))
    return path


def web_host(count: int = 1, size: int = 100 * MiB) -> SimulatedHost:
    host = SimulatedHost()
    for i in range(1, count + 1):
        host.add_domain(
            f"web-{i}", [SimDisk("vda", f"/images/web-{i}.qcow2", chain=(APP, BASE), size=size)]
        )
    return host


def make_controller(
    host: SimulatedHost, policy: Path, state: Path | None = None, **options: float | bool
) -> Controller:
    store = StateStore(state) if state else None
    return Controller(host, PolicySource(policy), host.clock, store, ControllerOptions(**options))


def run_for(controller: Controller, host: SimulatedHost, seconds: float) -> None:
    controller.run(until=host.clock.monotonic() + seconds)


WEB1 = DiskKey("web-1", "vda")


def states(controller: Controller) -> dict[DiskKey, DiskState]:
    assert controller.snapshot.plan is not None
    return {d.key: d.state for d in controller.snapshot.plan.decisions}


def test_a_selected_disk_is_pulled_to_independence_and_counted_once(tmp_path):
    host = web_host()
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 60)
    counters = controller.snapshot.counters
    assert host.chain(WEB1) == ()
    assert (counters.started[WEB1], counters.completed[WEB1]) == (1, 1)
    assert states(controller)[WEB1] is DiskState.INDEPENDENT


def test_a_pull_runs_at_the_budget(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s"))
    run_for(controller, host, 1)
    assert host.job(WEB1).bandwidth == 10 * MiB


def test_the_next_queued_pull_starts_the_instant_one_completes(tmp_path):
    host = web_host(count=2, size=10 * MiB)
    policy = write_policy(tmp_path / "p.yaml", max_concurrent=1, bandwidth="10MiB/s")
    controller = make_controller(host, policy)
    run_for(controller, host, 3.9)  # web-1 needs 2 s (two 10 MiB images at 10 MiB/s)
    assert host.chain(WEB1) == ()
    web2 = host.job(DiskKey("web-2", "vda"))
    assert web2 is not None and web2.cur >= 15 * MiB  # started at t=2 s, not at a timer tick


def test_never_more_pulls_than_max_concurrent(tmp_path):
    host = web_host(count=5, size=10 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s"))
    for _ in range(60):
        run_for(controller, host, 0.5)
        assert len(host.running_jobs()) <= 2
    assert controller.snapshot.counters.completed == {
        DiskKey(f"web-{i}", "vda"): 1 for i in range(1, 6)
    }


def test_ignored_and_unselected_disks_are_never_touched(tmp_path):
    host = web_host()
    host.add_domain("db-1", [SimDisk("vda", "/images/db-1.qcow2", chain=(BASE,))])
    host.add_domain("mail-1", [SimDisk("vda", "/images/mail-1.qcow2", chain=(BASE,))])
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 60)
    assert host.chain(DiskKey("db-1", "vda")) == (BASE,)
    assert host.chain(DiskKey("mail-1", "vda")) == (BASE,)
    assert host.calls()["start_pull"] == 1


def test_a_window_that_closes_pauses_the_pull_which_resumes_and_completes_next_window(tmp_path):
    host = web_host(size=30 * MiB)  # 60 MiB at 10 KiB/s: needs two windows
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10KiB/s", windows="[early]")
    controller = make_controller(host, policy)
    run_for(controller, host, 2 * 3600 + 60)  # 00:00 -> 02:01: one window opened and closed
    counters = controller.snapshot.counters
    assert counters.aborted == {(WEB1, AbortReason.WINDOW_CLOSED): 1}
    assert host.job(WEB1) is None
    assert states(controller)[WEB1] is DiskState.WAITING_WINDOW
    run_for(controller, host, 24 * 3600)
    assert host.chain(WEB1) == ()
    assert (controller.snapshot.counters.started[WEB1], counters.completed.get(WEB1, 0)) == (2, 0)
    assert controller.snapshot.counters.completed[WEB1] == 1


def test_the_copied_counter_reaches_the_bytes_a_completed_pull_had_to_copy(tmp_path):
    host = web_host(size=100 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s"))
    run_for(controller, host, 3)
    job = host.job(WEB1)
    assert job is not None and 0 < controller.snapshot.counters.copied[WEB1] <= job.cur
    run_for(controller, host, 60)
    assert controller.snapshot.counters.completed[WEB1] == 1
    assert controller.snapshot.counters.copied[WEB1] == job.end


def test_the_copied_counter_never_goes_back_across_a_pull_paused_by_its_window(tmp_path):
    host = web_host(size=30 * MiB)  # needs two windows at 10 KiB/s
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10KiB/s", windows="[early]")
    controller = make_controller(host, policy)
    seen = [0]
    for _ in range(26 * 6):  # 26 h in steps of 10 min: two windows
        run_for(controller, host, 600)
        seen.append(controller.snapshot.counters.copied.get(WEB1, 0))
    assert seen == sorted(seen)
    assert controller.snapshot.counters.completed[WEB1] == 1
    assert seen[-1] >= 60 * MiB  # the second pull advances again over what QEMU skips


SHIFTS = """\
version: 1
timezone: UTC
defaults: {bandwidth: 100KiB/s, max_concurrent: 4, outside_windows: pause}
windows:
  early: {days: daily, from: "01:00", to: "02:00"}
  late: {days: daily, from: "02:00", to: "03:00"}
rules:
  - {name: early, disks: [vda], windows: [early]}
  - {name: late, disks: [vdb], windows: [late]}
"""


def test_a_start_held_behind_an_abort_in_its_domain_is_made_in_the_same_wake_up(tmp_path):
    host = SimulatedHost()
    vda, vdb = host.add_domain(
        "app-1", [SimDisk(d, f"/images/app-1-{d}.qcow2", chain=(BASE,)) for d in ("vda", "vdb")]
    )
    policy = tmp_path / "p.yaml"
    policy.write_text(SHIFTS)
    controller = make_controller(host, policy, resync_interval=24 * 3600)
    run_for(controller, host, 3600 + 60)  # 01:01: vda pulls in its window (1 GiB, 100 KiB/s)
    assert (host.job(vda) is not None, host.job(vdb)) == (True, None)
    host.advance(3600 - 60)  # 02:00: early closes, late opens
    controller.step([])  # one wake-up, the window boundary's timer; the abort's event unread
    assert host.job(vda) is None
    assert host.job(vdb) is not None
    assert controller.snapshot.counters.aborted == {(vda, AbortReason.WINDOW_CLOSED): 1}


def test_finish_lets_a_running_pull_complete_outside_its_window(tmp_path):
    host = web_host(size=20 * MiB)
    policy = write_policy(
        tmp_path / "p.yaml", bandwidth="10KiB/s", windows="[early]", outside="finish"
    )
    controller = make_controller(host, policy)
    run_for(controller, host, 2 * 3600 + 300)  # 40 MiB at 10 KiB/s: the window is too short
    assert host.job(WEB1) is not None
    assert controller.snapshot.counters.aborted == {}
    run_for(controller, host, 3600)
    assert controller.snapshot.counters.completed == {WEB1: 1}


def test_a_failed_pull_backs_off_then_gives_up_after_max_attempts(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml", bandwidth="1MiB/s"))
    for attempt in range(3):
        run_for(controller, host, 5)
        assert host.job(WEB1) is not None, f"attempt {attempt + 1} should be running"
        host.fail_job(WEB1)
        run_for(controller, host, 30)
        assert states(controller)[WEB1] in {DiskState.BACKOFF, DiskState.GAVE_UP}
        run_for(controller, host, 60 * 2**attempt)
    assert controller.snapshot.counters.failed[WEB1] == 3
    assert states(controller)[WEB1] is DiskState.GAVE_UP
    assert host.calls()["start_pull"] == 3


def test_a_gave_up_disk_is_retried_after_the_policy_changes(tmp_path):
    host = web_host(size=1000 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="1MiB/s")
    controller = make_controller(host, policy)
    for _ in range(3):
        run_for(controller, host, 5)
        host.fail_job(WEB1)
        run_for(controller, host, 1000)
    assert states(controller)[WEB1] is DiskState.GAVE_UP
    write_policy(policy, bandwidth="2MiB/s")
    controller.inbox.put(Reload())
    run_for(controller, host, 5)
    assert host.job(WEB1) is not None


def test_a_broken_policy_on_reload_keeps_the_last_good_one(tmp_path):
    host = web_host(size=1000 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s")
    controller = make_controller(host, policy)
    run_for(controller, host, 5)
    policy.write_text("version: 1\ndefaults: {bandwidth: fast}\n")
    controller.inbox.put(Reload())
    run_for(controller, host, 5)
    snapshot = controller.snapshot
    assert not snapshot.policy_reload_ok
    assert snapshot.policy_error is not None and "bandwidth" in snapshot.policy_error
    assert host.job(WEB1).bandwidth == 10 * MiB


def test_restoring_the_policy_in_force_after_a_broken_one_publishes_success_at_once(tmp_path):
    host = web_host(size=1000 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s")
    controller = make_controller(host, policy, resync_interval=3600.0)
    run_for(controller, host, 5)
    good = policy.read_text()
    policy.write_text("version: 1\ndefaults: {bandwidth: fast}\n")
    controller.inbox.put(Reload())
    run_for(controller, host, 0.1)
    assert not controller.snapshot.policy_reload_ok
    policy.write_text(good)
    controller.inbox.put(Reload())
    run_for(controller, host, 0.1)
    assert controller.snapshot.policy_reload_ok
    assert controller.snapshot.policy_error is None


def test_a_policy_file_changed_on_disk_is_reloaded_without_a_signal(tmp_path):
    host = web_host(size=1000 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s")
    controller = make_controller(host, policy)
    run_for(controller, host, 5)
    write_policy(policy, bandwidth="20MiB/s")
    run_for(controller, host, 1.5)
    assert host.job(WEB1).bandwidth == 20 * MiB


def test_a_pull_started_by_hand_on_a_selected_disk_is_adopted_and_counted(tmp_path):
    host = web_host(size=10 * MiB)
    host.add_foreign_job(WEB1, JobType.PULL, bandwidth=5 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 60)
    counters = controller.snapshot.counters
    assert (counters.started[WEB1], counters.completed[WEB1]) == (1, 1)
    assert host.calls()["start_pull"] == 0


def test_a_domain_destroyed_mid_pull_is_counted_as_aborted_and_the_loop_goes_on(tmp_path):
    host = web_host(count=2, size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s"))
    run_for(controller, host, 2)
    host.destroy_domain("web-1")
    run_for(controller, host, 40)  # no event comes: the periodic resync finds out
    counters = controller.snapshot.counters
    assert counters.aborted == {(WEB1, AbortReason.DOMAIN_STOPPED): 1}
    assert counters.failed == {}
    assert states(controller)[WEB1] is DiskState.NOT_RUNNING
    assert host.job(DiskKey("web-2", "vda")) is not None


def test_a_restarted_daemon_adopts_the_running_pull_without_restarting_it(tmp_path):
    host = web_host(size=100 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s")
    first = make_controller(host, policy, state=tmp_path / "state")
    run_for(first, host, 3)  # killed: no shutdown, no abort
    second = make_controller(host, policy, state=tmp_path / "state")
    run_for(second, host, 60)
    assert host.calls()["start_pull"] == 1
    assert host.calls()["abort"] == 0
    counters = second.snapshot.counters
    assert (counters.started.get(WEB1, 0), counters.completed[WEB1]) == (0, 1)


def test_a_pull_that_completed_while_the_daemon_was_down_is_counted_exactly_once(tmp_path):
    host = web_host(size=10 * MiB)
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s")
    first = make_controller(host, policy, state=tmp_path / "state")
    run_for(first, host, 1)
    host.close()
    host.complete_silently(WEB1)
    second = make_controller(host, policy, state=tmp_path / "state")
    run_for(second, host, 60)
    assert second.snapshot.counters.completed == {WEB1: 1}


def test_a_dropped_connection_marks_libvirt_down_without_a_busy_loop(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 2)
    host.drop_connection()
    host.reset_calls()
    run_for(controller, host, 600)
    assert not controller.snapshot.libvirt_up
    assert host.calls()["observe"] <= 600 / MAX_CONNECT_BACKOFF + 5  # capped backoff


def test_a_host_back_from_an_outage_is_seen_within_the_backoff_cap(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 2)
    host.drop_connection()
    run_for(controller, host, 600)
    host.restore_connection()
    run_for(controller, host, MAX_CONNECT_BACKOFF)
    assert controller.snapshot.libvirt_up


def test_an_outage_is_one_warning_a_reminder_every_five_minutes_and_a_recovery(tmp_path, caplog):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 2)
    host.drop_connection()
    with caplog.at_level(logging.DEBUG, logger="exporter.daemon.controller"):
        run_for(controller, host, 2 * STILL_DOWN_WARNING_SECONDS + 10)
        host.restore_connection()
        run_for(controller, host, MAX_CONNECT_BACKOFF)
    about_the_host = [r for r in caplog.records if "the host" in r.getMessage()]
    assert [r.levelno for r in about_the_host if r.levelno > logging.DEBUG] == [
        logging.WARNING, logging.WARNING, logging.WARNING, logging.INFO,
    ]  # fmt: skip
    assert sum(r.levelno == logging.DEBUG for r in about_the_host) > 100  # every other try
    outage = float(re.findall(r"reachable again after (\d+) s", about_the_host[-1].getMessage())[0])
    assert 2 * STILL_DOWN_WARNING_SECONDS + 10 <= outage <= 2 * STILL_DOWN_WARNING_SECONDS + 17


def test_shutdown_leaves_running_pulls_alone_by_default(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"))
    run_for(controller, host, 2)
    controller.inbox.put(Shutdown())
    run_for(controller, host, 1)
    assert host.job(WEB1) is not None


def test_shutdown_can_abort_running_pulls_and_counts_them(tmp_path):
    host = web_host(size=1000 * MiB)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"), abort_on_shutdown=True)
    run_for(controller, host, 2)
    controller.inbox.put(Shutdown())
    run_for(controller, host, 1)
    assert host.job(WEB1) is None
    assert controller.snapshot.counters.aborted == {(WEB1, AbortReason.SHUTDOWN): 1}


@pytest.mark.parametrize("interval", [2.0])
def test_progress_refresh_reads_only_running_jobs(tmp_path, interval):
    host = web_host(count=50, size=1000 * MiB)
    controller = make_controller(
        host, write_policy(tmp_path / "p.yaml"), progress_interval=interval
    )
    run_for(controller, host, 1)
    host.reset_calls()
    run_for(controller, host, 20)
    calls = host.calls()
    assert calls["observe"] == 0
    assert calls["refresh_jobs_keys"] == 2 * calls["refresh_jobs"]


def test_pull_log_records_carry_the_disk_and_the_reason_as_fields(tmp_path, caplog):
    host = web_host(size=30 * MiB)  # outlives its window at 10 KiB/s: started, then aborted
    policy = write_policy(tmp_path / "p.yaml", bandwidth="10KiB/s", windows="[early]")
    controller = make_controller(host, policy)
    with caplog.at_level(logging.INFO, logger="exporter.daemon.controller"):
        run_for(controller, host, 2 * 3600 + 60)
    started = next(r for r in caplog.records if r.getMessage().startswith("started pull"))
    aborted = next(r for r in caplog.records if r.getMessage().startswith("aborted pull"))
    assert (started.domain, started.disk) == ("web-1", "vda")
    assert (aborted.domain, aborted.disk, aborted.reason) == ("web-1", "vda", "window_closed")
