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

import faults
import helpers
import libvirt
import pytest
from exporter_process import ExporterProcess, policy_for_domains
from faults import Subject
from helpers import MIB

from exporter.daemon.controller import MAX_CONNECT_BACKOFF


@pytest.fixture(autouse=True)
def libvirtd_shared() -> Iterator[None]:
    """Overrides conftest's shared lock: held exclusively, libvirtd restored on the way out."""
    with helpers.libvirtd_lock(exclusive=True), faults.libvirtd_always_restored():
        yield


@dataclass
class Scene:
    folder: Path
    workdir: Path
    names: list[str] = field(default_factory=list)
    daemons: list[ExporterProcess] = field(default_factory=list)

    def daemon(self, domain: str, bandwidth: str, *args: str) -> ExporterProcess:
        made = ExporterProcess(self.workdir, helpers.URI, args)  # debug: every attempt logged
        made.policy.write_text(
            policy_for_domains([domain], bandwidth, max_concurrent=64, rule="faults")
        )
        self.daemons.append(made)
        return made


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    helpers.require_libvirt()
    made = Scene(helpers.make_image_folder(), tmp_path)
    yield made
    for daemon in made.daemons:
        daemon.stop()
    faults.start_libvirtd()  # a failed test may have left it stopped
    conn = faults.open_conn()
    try:
        for name in made.names:
            helpers.remove_domain(conn, name)
    finally:
        conn.close()
        helpers.remove_image_folder(made.folder)
    for daemon in made.daemons:
        assert not daemon.tracebacks(), daemon.log()


@pytest.fixture
def conn(scene: Scene) -> Iterator[libvirt.virConnect]:
    opened = faults.open_conn()
    yield opened
    with contextlib.suppress(libvirt.libvirtError):  # died with libvirtd
        opened.close()


def test_libvirtd_restart_mid_pull_reconnects_and_counts_the_completion_by_its_event(
    scene: Scene, conn: libvirt.virConnect
) -> None:
    subject = faults.make_subject(conn, scene.names, scene.folder)
    # Progress and resync timers far away: only an event can tell the daemon promptly.
    daemon = scene.daemon(
        subject.domain, "2MiB/s", "--progress.interval", "120", "--resync.interval", "120"
    )
    daemon.start()
    faults.wait_cursor_above(conn, subject.domain, MIB)
    cpu_before = daemon.cpu_seconds()

    faults.stop_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=0, timeout=10)
    faults.start_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=1, timeout=20)
    assert daemon.cpu_seconds() - cpu_before < 1.0, "resync should cost little"

    conn = faults.open_conn()
    faults.wait_cursor_above(conn, subject.domain, faults.cursor(conn, subject.domain))
    faults.assert_counts(daemon, subject, started=1)
    faults.wait_no_job(conn, subject.domain, 40)
    took = daemon.wait_value(
        "blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels()
    )
    assert took < 3, f"completion counted {took:.1f} s after the job ended: events lost?"
    faults.assert_counts(daemon, subject, started=1, completed=1)
    faults.stop_domain(conn, subject.domain)
    conn.close()
    assert subject.content_unchanged()


def test_libvirtd_down_for_half_a_minute_costs_no_busy_loop_and_is_shown(
    scene: Scene, conn: libvirt.virConnect
) -> None:
    subject: Subject = faults.make_subject(conn, scene.names, scene.folder, fill_mib=24)
    daemon = scene.daemon(subject.domain, "2MiB/s", "--progress.interval", "0.5")
    daemon.start()
    faults.wait_cursor_above(conn, subject.domain, 0)

    faults.stop_libvirtd()
    daemon.wait_value("blockpull_libvirt_up", equals=0, timeout=10)
    cpu_before = daemon.cpu_seconds()
    began = time.monotonic()
    while time.monotonic() - began < 30:  # the pull ends in QEMU meanwhile, unannounced
        assert daemon.value("blockpull_libvirt_up") == 0  # scrapes answer without libvirt
        time.sleep(2)
    cpu = daemon.cpu_seconds() - cpu_before
    attempts = daemon.log().count("cannot observe the host")
    faults.start_libvirtd()

    assert cpu < 0.5, f"{cpu:.2f} CPU seconds in 30 s of downtime"
    assert 3 <= attempts <= 12, f"{attempts} reconnection attempts in 30 s: backoff?"
    # Seen again within the 5 s backoff cap of reconnection attempts.
    daemon.wait_value("blockpull_libvirt_up", equals=1, timeout=MAX_CONNECT_BACKOFF + 5)
    conn = faults.open_conn()
    assert faults.job_info(conn, subject.domain) == {}
    # Finished while libvirtd was down: no event ever comes; the re-read chain proves it.
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    time.sleep(1)
    faults.assert_counts(daemon, subject, started=1, completed=1)
    faults.stop_domain(conn, subject.domain)
    conn.close()
    assert subject.content_unchanged()
