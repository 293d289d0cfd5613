"""The production guards on a real libvirtd + QEMU: free space, one pull per domain read in full,
other hands on the same disks, holds, and the series of domains that are gone.

Every policy names only this test's own domains. Free space is sampled by the test itself
(statvfs, every 50 ms), guests' states and jobs read on the test's own connection: the daemon's
snapshot is only what is being checked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from harness.failing_storage import tmpfs
from harness.free_space import floor_of, free_bytes, overlays_with_data, watching
from harness.ground_truth import block_job, live_chain
from harness.in_process_daemon import QUICK_TIMERS, InProcessDaemon, running_in_process
from harness.libvirt_lab import DiskSpec, Lab, pull_by_hand
from harness.libvirtd import URI
from harness.policy_files import policy, rule
from harness.qemu_images import MIB, run
from harness.waiting import wait_for, wait_until
from harness.writing_guest import create_writer_image

from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey
from exporter.daemon.controller import Reload
from exporter.metrics.renderer import render

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`blockpull-exporter ARGS`, as an operator runs it."""
    command = [sys.executable, "-m", "exporter", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)


def pulling(conn: libvirt.virConnect, key: DiskKey) -> bool:
    return block_job(conn, key) is not None


def reason(daemon: InProcessDaemon, key: DiskKey) -> str:
    plan = daemon.snapshot.plan
    assert plan is not None
    return next(d.reason for d in plan.decisions if d.key == key)


# -- free space ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(domains: Lab) -> Iterator[Path]:
    """A 260 MiB file system in the test's folder (the issue's host had 257 MiB free); its
    domains go first, then it goes."""
    with tmpfs(domains.folder / "small", "260M") as mountpoint:
        try:
            yield mountpoint
        finally:
            domains.remove_domains(wait=True)


def test_pulls_keep_min_free_and_a_guest_writing_to_the_same_file_system_runs_on(
    libvirt_conn: libvirt.virConnect, domains: Lab, small_fs: Path
) -> None:
    # The host: 260 MiB free, three pulls of 120 MiB each, and a guest writing there.
    keys = overlays_with_data(domains, small_fs, ("a", "b", "c"), fill_mib=120)
    guest = domains.boot("writer", [DiskSpec("vda", create_writer_image(small_fs))]).name()
    floor = floor_of(small_fs)
    text = policy(rule("mine", [k.domain for k in keys]), max_concurrent=3)  # min_free: 10%
    with (
        watching(small_fs, guest) as watch,
        running_in_process(text, domains.folder, only=[k.domain for k in keys]) as daemon,
    ):
        daemon.wait_completed([keys[0]], timeout=60)
        wait_until(
            lambda: all(daemon.state(k) is DiskState.WAITING_SPACE for k in keys[1:]),
            30,
            lambda: f"the others waiting for space: {[daemon.state(k) for k in keys]}",
        )
        time.sleep(20)  # the guest writes on; nothing else starts
        waiting = reason(daemon, keys[1])
        started = [c.key for c in daemon.host.calls_of("start_pull")]
    assert started == [keys[0]]
    assert "waiting for free space" in waiting
    assert min(watch.free) >= floor, f"free space fell to {min(watch.free)} < {floor}"
    assert not watch.paused(), "the guest was paused (I/O error)"
    assert libvirt_conn.lookupByName(guest).state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_without_the_guard_the_same_pulls_fill_the_file_system_and_pause_the_guest(
    libvirt_conn: libvirt.virConnect, domains: Lab, small_fs: Path
) -> None:
    keys = overlays_with_data(domains, small_fs, ("a", "b", "c"), fill_mib=120)
    guest = domains.boot("writer", [DiskSpec("vda", create_writer_image(small_fs))]).name()
    text = policy(rule("mine", [k.domain for k in keys]), max_concurrent=3, min_free=0)
    with (
        watching(small_fs, guest) as watch,
        running_in_process(text, domains.folder, only=[k.domain for k in keys]),
    ):
        paused = wait_for(watch.paused, 60, 0.2)
    assert paused, f"the guest kept running; free space went down to {min(watch.free)}"
    assert min(watch.free) < floor_of(small_fs)


def test_a_running_pull_stops_when_something_else_fills_its_file_system(
    libvirt_conn: libvirt.virConnect, domains: Lab, small_fs: Path
) -> None:
    [key] = overlays_with_data(domains, small_fs, ("a",), fill_mib=120)
    text = policy(rule("mine", [key.domain]), bandwidth="4MiB/s")
    with running_in_process(text, domains.folder, only=[key.domain]) as daemon:
        wait_until(lambda: pulling(libvirt_conn, key), 30, "the pull")
        filler = small_fs / "filler"
        size = free_bytes(small_fs) - 10 * MIB
        run("fallocate", "-l", str(size), filler)  # something else takes the room
        began = time.monotonic()
        wait_until(lambda: daemon.aborted(key, AbortReason.LOW_SPACE) == 1, 10, "low_space")
        took = time.monotonic() - began
        state = daemon.state(key)
        filler.unlink()
    assert not pulling(libvirt_conn, key)
    assert state is DiskState.WAITING_SPACE
    assert took < QUICK_TIMERS.progress_interval + 1.0


def test_what_a_pull_will_write_is_read_from_the_chain_not_the_virtual_size(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [(key, chain)] = domains.start_with_chains("thin", [24], size_mib=1024).items()
    text = policy(rule("mine", [key.domain]), bandwidth="1MiB/s")
    with running_in_process(text, image_folder, only=[key.domain]) as daemon:
        wait_until(lambda: key in daemon.controller.memory.tracked, 30, "the pull")
        growth = daemon.controller.memory.tracked[key].growth
    allocated = chain.base.stat().st_blocks * 512
    assert growth == allocated  # 24 MiB of data and its metadata, not the 1 GiB disk
    assert growth < 32 * MIB


# -- one pull per domain ----------------------------------------------------------------------


def test_no_pull_starts_in_a_domain_where_somebody_else_just_started_one(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    chains = domains.start_with_chains("two", [32, 32])
    vda, vdb = sorted(chains)
    closed = policy(rule("mine", [vda.domain], disks=["vda"], action="ignore"))
    opened = policy(rule("mine", [vda.domain], disks=["vda"]))
    with running_in_process(closed, image_folder, only=[vda.domain]) as daemon:
        wait_until(lambda: daemon.snapshot.plan is not None, 30, "a first reconcile")
        pull_by_hand(libvirt_conn, vdb, 1 * MIB)  # unseen: no event, the sweep comes later
        daemon.policy.write_text(opened)
        daemon.controller.inbox.put(Reload())
        wait_until(lambda: daemon.host.inspections, 10, "a full read of the domain")
        time.sleep(2)
        starts = daemon.host.calls_of("start_pull")
        why = reason(daemon, vda)
    assert starts == []
    assert "another disk of this domain is pulling" in why


def test_a_foreign_job_counts_against_the_budget_within_a_minute(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [ours] = domains.start_with_chains("ours", [64])
    [theirs] = domains.start_with_chains("theirs", [64])
    text = policy(rule("mine", [ours.domain]), bandwidth="1MiB/s", max_concurrent=1)
    options = QUICK_TIMERS  # resyncs every second: the sweep alone finds a hand-made job
    with running_in_process(
        text, image_folder, options=options, only=[ours.domain, theirs.domain]
    ) as daemon:
        wait_until(lambda: pulling(libvirt_conn, ours), 30, "our pull")
        pull_by_hand(libvirt_conn, theirs, 1 * MIB)
        began = time.monotonic()
        wait_until(lambda: daemon.aborted(ours, AbortReason.OVER_BUDGET) == 1, 65, "over_budget")
        took = time.monotonic() - began
    assert took < 60, f"the foreign job counted after {took:.1f} s"


# -- other hands --------------------------------------------------------------------------------


def test_a_pull_aborted_by_hand_is_respected_until_the_backoff_ends(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [key] = domains.start_with_chains("hand", [64])
    retry = {"max_attempts": 3, "backoff": "10s", "max_backoff": "1m"}
    text = policy(rule("mine", [key.domain]), bandwidth="1MiB/s", retry=retry)
    with running_in_process(text, image_folder, only=[key.domain]) as daemon:
        wait_until(lambda: pulling(libvirt_conn, key), 30, "the pull")
        libvirt_conn.lookupByName(key.domain).blockJobAbort(key.disk, 0)  # by hand
        aborted_at = time.monotonic()
        wait_until(lambda: daemon.aborted(key, AbortReason.EXTERNAL) == 1, 10, "external")
        assert daemon.state(key) is DiskState.BACKOFF
        wait_until(lambda: pulling(libvirt_conn, key), 20, "the pull again")
        again = time.monotonic() - aborted_at
    assert 9.5 <= again < 13, f"started again {again:.1f} s after the hand abort"


def test_a_speed_set_by_hand_above_the_share_is_put_back(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [key] = domains.start_with_chains("speed", [64])
    text = policy(rule("mine", [key.domain]), bandwidth="1MiB/s")
    with running_in_process(text, image_folder, only=[key.domain]) as daemon:
        wait_until(lambda: pulling(libvirt_conn, key), 30, "the pull")
        dom = libvirt_conn.lookupByName(key.domain)
        dom.blockJobSetSpeed(key.disk, 8 * MIB, libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES)
        began = time.monotonic()
        wait_until(
            lambda: (job := block_job(libvirt_conn, key)) is not None and job.bandwidth == MIB,
            5,
            "the share put back",
        )
        took = time.monotonic() - began
        assert daemon.alive()
    assert took <= QUICK_TIMERS.progress_interval + 1.0


def test_a_reload_that_ignores_the_disk_aborts_the_daemons_pull_within_a_second(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [key] = domains.start_with_chains("deselect", [64])
    text = policy(rule("mine", [key.domain]), bandwidth="1MiB/s")
    with running_in_process(text, image_folder, only=[key.domain]) as daemon:
        wait_until(lambda: pulling(libvirt_conn, key), 30, "the pull")
        daemon.policy.write_text(policy(rule("mine", [key.domain], action="ignore")))
        daemon.controller.inbox.put(Reload())  # SIGHUP
        began = time.monotonic()
        wait_until(lambda: not pulling(libvirt_conn, key), 5, "the abort")
        took = time.monotonic() - began
        counted = daemon.aborted(key, AbortReason.DESELECTED)
    assert took < 1.0
    assert counted == 1


# -- holds --------------------------------------------------------------------------------------


def test_hold_lets_a_snapshot_through_at_once_and_release_resumes(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path, tmp_path: Path
) -> None:
    [key] = domains.start_with_chains("held", [64])
    state = tmp_path / "state"
    text = policy(rule("mine", [key.domain]), bandwidth="2MiB/s")
    with running_in_process(text, image_folder, only=[key.domain], state_dir=state) as daemon:
        wait_until(lambda: pulling(libvirt_conn, key), 30, "the pull")
        done = cli("hold", "--state.dir", str(state), "--reason", "backup", key.domain)
        assert done.returncode == 0, done.stderr
        began = time.monotonic()
        wait_until(lambda: not pulling(libvirt_conn, key), 5, "the pull aborted")
        took = time.monotonic() - began
        snapshot = image_folder / "snap.qcow2"
        run(
            "virsh", "-c", URI, "snapshot-create-as", key.domain, "--disk-only", "--no-metadata",
            "--diskspec", f"{key.disk},file={snapshot}",
        )  # fmt: skip
        time.sleep(2)
        assert not pulling(libvirt_conn, key)  # nothing started while held
        assert daemon.state(key) is DiskState.HELD
        assert daemon.aborted(key, AbortReason.HELD) == 1
        assert cli("release", "--state.dir", str(state), key.domain).returncode == 0
        daemon.wait_completed([key], timeout=120)
    assert took < 1.0, f"the hold took {took:.2f} s"
    assert live_chain(libvirt_conn, key) == ()


def test_a_hold_outlives_a_restart_of_the_daemon(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path, tmp_path: Path
) -> None:
    [key] = domains.start_with_chains("restart", [16])
    state = tmp_path / "state"
    assert cli("hold", "--state.dir", str(state), key.domain).returncode == 0
    text = policy(rule("mine", [key.domain]))
    for _ in range(2):
        with running_in_process(text, image_folder, only=[key.domain], state_dir=state) as daemon:
            wait_until(lambda: daemon.state(key) is DiskState.HELD, 30, "held")
            time.sleep(1)
            assert daemon.host.calls_of("start_pull") == []


# -- stale series ---------------------------------------------------------------------------------


def test_the_series_of_an_undefined_domain_go_within_one_resync(
    libvirt_conn: libvirt.virConnect, domains: Lab, image_folder: Path
) -> None:
    [gone] = domains.start_with_chains("gone", [8])
    [kept] = domains.start_with_chains("kept", [8])
    text = policy(rule("mine", [gone.domain, kept.domain]))
    with running_in_process(text, image_folder, only=[gone.domain, kept.domain]) as daemon:
        daemon.wait_completed([gone, kept], timeout=60)
        assert f'domain="{gone.domain}"' in render(daemon.snapshot, "test").decode()
        dom = libvirt_conn.lookupByName(gone.domain)
        dom.destroy()
        dom.undefine()
        time.sleep(QUICK_TIMERS.resync_interval + 0.5)
        text_after = render(daemon.snapshot, "test").decode()
    assert f'domain="{gone.domain}"' not in text_after
    assert f'domain="{kept.domain}"' in text_after
