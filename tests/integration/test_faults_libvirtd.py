"""libvirtd goes away under the daemon: a restart mid-pull, and a downtime of half a minute.

These tests stop libvirtd, so they hold the libvirtd lock exclusively for their whole duration
(every other integration test holds it shared) and always leave libvirtd running. They never
use the session-wide `libvirt_conn`, which dies with libvirtd: they open their own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from harness.daemon_process import DaemonProcess
from harness.fault_subject import Subject, assert_counts, make_subject
from harness.ground_truth import block_job, cursor, wait_cursor_above, wait_no_job
from harness.libvirt_lab import Lab, stop_domain
from harness.libvirtd import (
    URI,
    libvirtd_always_restored,
    libvirtd_lock,
    open_conn,
    require_libvirt,
    start_libvirtd,
    stop_libvirtd,
)
from harness.policy_files import policy_for_domains, write_policy
from harness.qemu_images import MIB

from exporter.daemon.controller import MAX_CONNECT_BACKOFF


@pytest.fixture(autouse=True)
def libvirtd_shared() -> Iterator[None]:
    """Overrides conftest's shared lock: held exclusively, libvirtd restored on the way out."""
    with libvirtd_lock(exclusive=True), libvirtd_always_restored():
        yield


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    require_libvirt()
    opened = open_conn()
    yield opened
    with contextlib.suppress(libvirt.libvirtError):  # died with libvirtd
        opened.close()


@dataclass
class Scene:
    lab: Lab
    workdir: Path
    daemons: list[DaemonProcess] = field(default_factory=list)

    def daemon(self, domain: str, bandwidth: str, *args: str) -> DaemonProcess:
        made = DaemonProcess(self.workdir, URI, args)  # debug: every attempt logged
        policy = policy_for_domains([domain], bandwidth, max_concurrent=64, rule_name="faults")
        write_policy(made.policy, policy)
        self.daemons.append(made)
        return made


@pytest.fixture
def scene(tmp_path: Path, conn: libvirt.virConnect) -> Iterator[Scene]:
    made = Scene(Lab.open(conn), tmp_path)
    yield made
    for daemon in made.daemons:
        daemon.stop()
    try:
        start_libvirtd()  # a failed test may have left it stopped
    finally:
        made.lab.close()  # on a fresh connection: `conn` may have died with libvirtd
    for daemon in made.daemons:
        assert not daemon.tracebacks(), daemon.log()


def test_libvirtd_restart_mid_pull_reconnects_and_counts_the_completion_by_its_event(
    scene: Scene, conn: libvirt.virConnect
) -> None:
    subject = make_subject(scene.lab)
    # Progress and resync timers far away: only an event can tell the daemon promptly.
    daemon = scene.daemon(
        subject.domain, "2MiB/s", "--progress.interval", "120", "--resync.interval", "120"
    )
    daemon.start()
    wait_cursor_above(conn, subject.key, MIB)
    cpu_before = daemon.cpu_seconds()

    stop_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=0, timeout=10)
    start_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=1, timeout=20)
    assert daemon.cpu_seconds() - cpu_before < 1.0, "resync should cost little"

    conn = open_conn()
    wait_cursor_above(conn, subject.key, cursor(conn, subject.key))
    assert_counts(daemon, subject, started=1)
    wait_no_job(conn, subject.key, 40)
    took = daemon.wait_value(
        "blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels()
    )
    assert took < 3, f"completion counted {took:.1f} s after the job ended: events lost?"
    assert_counts(daemon, subject, started=1, completed=1)
    stop_domain(conn, subject.domain)
    conn.close()
    assert subject.content_unchanged()


def test_libvirtd_down_for_half_a_minute_costs_no_busy_loop_and_is_shown(
    scene: Scene, conn: libvirt.virConnect
) -> None:
    subject: Subject = make_subject(scene.lab, fill_mib=24)
    daemon = scene.daemon(subject.domain, "2MiB/s", "--progress.interval", "0.5")
    daemon.start()
    wait_cursor_above(conn, subject.key, 0)

    stop_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=0, timeout=10)
    cpu_before = daemon.cpu_seconds()
    began = time.monotonic()
    while time.monotonic() - began < 30:  # the pull ends in QEMU meanwhile, unannounced
        assert daemon.value("blockpull_libvirt_up") == 0  # scrapes answer without libvirt
        time.sleep(2)
    cpu = daemon.cpu_seconds() - cpu_before
    attempts = daemon.log().count("cannot observe the host")
    start_libvirtd()

    assert cpu < 0.5, f"{cpu:.2f} CPU seconds in 30 s of downtime"
    assert 3 <= attempts <= 12, f"{attempts} reconnection attempts in 30 s: backoff?"
    # Seen again within the 5 s backoff cap of reconnection attempts.
    daemon.wait_value("blockpull_libvirt_up", equals=1, timeout=MAX_CONNECT_BACKOFF + 5)
    conn = open_conn()
    assert block_job(conn, subject.key) is None
    # Finished while libvirtd was down: no event ever comes; the re-read chain proves it.
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    time.sleep(1)
    assert_counts(daemon, subject, started=1, completed=1)
    stop_domain(conn, subject.domain)
    conn.close()
    assert subject.content_unchanged()
