"""`sim:///path.json`: the simulated host kept in a file, shared by processes."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest

from exporter.core.clock import ManualClock
from exporter.core.model import (
    DiskKey,
    DomainState,
    ErrorReason,
    HostError,
    HostEvent,
    JobEvent,
    JobOutcome,
    JobType,
)
from exporter.hosts.sim import state_file
from exporter.hosts.sim.state_file import (
    DEMO_DEVICE_SPEED,
    SimStateError,
    is_sim_uri,
    open_sim_host,
    sim_path,
)

WEB1 = DiskKey("web-1", "vda")
WEB2 = DiskKey("web-2", "vda")


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sim://{tmp_path}/state.json"


def test_is_sim_uri_accepts_only_the_sim_scheme() -> None:
    assert [is_sim_uri(u) for u in ("sim:///x.json", "qemu:///system", "sim:x")] == [
        True,
        False,
        False,
    ]


def test_sim_path_is_the_absolute_path_after_the_scheme() -> None:
    assert sim_path("sim:///var/tmp/demo%20host.json") == Path("/var/tmp/demo host.json")


@pytest.mark.parametrize("bad", ["sim://relative.json", "sim://", "sim:///", "qemu:///system"])
def test_sim_uri_without_an_absolute_file_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="sim"):
        sim_path(bad)


def test_missing_file_is_created_with_the_demo_scenario(uri: str) -> None:
    host = open_sim_host(uri, ManualClock())
    domains = host.observe().domains
    assert [d.name for d in domains] == ["web-1", "web-2", "web-3", "web-4", "db-1", "db-2"]
    assert all(d.state is DomainState.RUNNING for d in domains)
    assert all(d.disks[0].target == "vda" and len(d.disks[0].chain) == 2 for d in domains)
    assert sim_path(uri).exists()


def test_demo_scenario_drains_in_a_few_minutes_with_two_pulls(uri: str) -> None:
    clock = ManualClock()
    host = open_sim_host(uri, clock)
    keys = [DiskKey(d.name, "vda") for d in host.observe().domains]
    for key in keys:
        host.start_pull(key, None, None)
    clock.advance(1)
    total = sum(job.end for job in host.running_jobs().values())
    assert 60 < total / (2 * DEMO_DEVICE_SPEED) < 300


def test_reopening_advances_by_the_clock_time_since_the_last_save(uri: str) -> None:
    clock = ManualClock()
    open_sim_host(uri, clock).start_pull(WEB1, None, 10 * 1024**2)
    clock.advance(3)
    job = open_sim_host(uri, clock).job(WEB1)
    assert job is not None
    assert job.cur == 30 * 1024**2


def test_two_hosts_on_one_file_see_the_same_progress(uri: str) -> None:
    clock = ManualClock()
    daemon, status = open_sim_host(uri, clock), open_sim_host(uri, clock)
    daemon.start_pull(WEB1, None, None)
    clock.advance(7.5)
    assert daemon.refresh_jobs([WEB1]) == status.refresh_jobs([WEB1])


def test_change_made_by_another_host_is_seen_on_the_next_call(uri: str) -> None:
    clock = ManualClock()
    daemon, other = open_sim_host(uri, clock), open_sim_host(uri, clock)
    daemon.observe()
    other.destroy_domain("web-2")
    states = {d.name: d.state for d in daemon.observe().domains}
    assert states["web-2"] is DomainState.SHUTOFF


def test_completion_is_announced_once_across_calls(uri: str) -> None:
    clock = ManualClock()
    host = open_sim_host(uri, clock)
    events: list[HostEvent] = []
    host.subscribe(events.append)
    host.start_pull(WEB1, None, None)
    clock.advance(3600)
    host.observe()
    host.observe()
    host.start_pull(WEB2, None, None)
    host.observe()
    assert events == [JobEvent(WEB1, JobType.PULL, JobOutcome.COMPLETED)]


def test_file_round_trip_preserves_chains_jobs_and_faults(uri: str) -> None:
    clock = ManualClock()
    host = open_sim_host(uri, clock)
    host.start_pull(WEB1, "/var/lib/libvirt/images/templates/os-base-12.qcow2", 5 * 1024**2)
    host.add_foreign_job(WEB2, JobType.COPY)
    host.destroy_domain("db-1")
    host.fail_next_start(DiskKey("db-2", "vda"), ErrorReason.DISK_BUSY)
    clock.advance(2)
    again = open_sim_host(uri, clock)
    assert again.to_state() == host.to_state()


def test_injected_start_failure_survives_a_reopen(uri: str) -> None:
    clock = ManualClock()
    open_sim_host(uri, clock).fail_next_start(WEB1, ErrorReason.DISK_BUSY)
    with pytest.raises(HostError) as error:
        open_sim_host(uri, clock).start_pull(WEB1, None, None)
    assert error.value.reason is ErrorReason.DISK_BUSY


def test_saved_file_is_versioned_json(uri: str) -> None:
    open_sim_host(uri, ManualClock()).start_pull(WEB1, None, None)
    document = json.loads(sim_path(uri).read_text())
    assert (document["format"], document["version"], len(document["host"]["jobs"])) == (
        "blockpull-exporter-sim",
        1,
        1,
    )


def test_saving_leaves_no_temporary_files(uri: str) -> None:
    host = open_sim_host(uri, ManualClock())
    for _ in range(3):
        host.start_pull(WEB1, None, None)
        host.abort(WEB1)
    names = sorted(p.name for p in sim_path(uri).parent.iterdir())
    assert names == ["state.json", "state.json.lock"]


def test_file_of_another_version_is_rejected(uri: str) -> None:
    open_sim_host(uri, ManualClock())
    path = sim_path(uri)
    document = json.loads(path.read_text())
    document["version"] = 2
    path.write_text(json.dumps(document))
    with pytest.raises(SimStateError, match="version 2"):
        open_sim_host(uri, ManualClock())


def test_file_that_is_not_json_is_rejected(uri: str) -> None:
    sim_path(uri).write_text("{not json")
    with pytest.raises(SimStateError, match="not JSON"):
        open_sim_host(uri, ManualClock())


def test_vanished_file_fails_calls_as_a_lost_connection(uri: str) -> None:
    host = open_sim_host(uri, ManualClock())
    sim_path(uri).unlink()
    with pytest.raises(HostError) as error:
        host.observe()
    assert error.value.reason is ErrorReason.CONNECTION


def test_too_many_open_files_fails_calls_as_a_lost_connection(uri, monkeypatch) -> None:
    host = open_sim_host(uri, ManualClock())

    def no_descriptor_left(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "open", no_descriptor_left)
    with pytest.raises(HostError) as error:
        host.observe()
    assert error.value.reason is ErrorReason.CONNECTION
    assert "Too many open files" in str(error.value)


def test_a_full_disk_fails_a_change_as_a_lost_connection(uri, monkeypatch) -> None:
    host = open_sim_host(uri, ManualClock())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_file, "write_atomically", full)
    with pytest.raises(HostError) as error:
        host.start_pull(WEB1, None, 10 * 1024**2)
    assert error.value.reason is ErrorReason.CONNECTION


def test_concurrent_writers_lose_no_update(uri: str) -> None:
    clock = ManualClock()
    open_sim_host(uri, clock)

    def churn(key: DiskKey) -> None:
        host = open_sim_host(uri, clock)  # its own file handle, as another process would have
        for _ in range(30):
            host.start_pull(key, None, 1)
            host.abort(key)
        host.start_pull(key, None, 1)

    threads = [threading.Thread(target=churn, args=(key,)) for key in (WEB1, WEB2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(open_sim_host(uri, clock).running_jobs()) == [WEB1, WEB2]
