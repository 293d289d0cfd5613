"""The storage or the domain under a pull fails: a destroyed or shut-down domain, a backing
store that dies (qemu-nbd killed), a full file system under the overlay (a small tmpfs)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import faults
import helpers
import libvirt
import pytest
from conftest import Domains
from exporter_process import ExporterProcess, policy_for_domains
from faults import NbdServer, Subject
from helpers import MIB


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def _policy(domain: str, bandwidth: str, max_attempts: int = 5) -> str:
    return policy_for_domains(
        [domain], bandwidth, max_concurrent=64, max_attempts=max_attempts, rule="faults"
    )


def _daemon(workdir: Path, domain: str, bandwidth: str, max_attempts: int = 5) -> ExporterProcess:
    made = ExporterProcess(workdir, helpers.URI, ("--progress.interval", "0.5"), "info")
    made.policy.write_text(_policy(domain, bandwidth, max_attempts))
    return made


@pytest.fixture
def daemons() -> Iterator[list[ExporterProcess]]:
    made: list[ExporterProcess] = []
    yield made
    for daemon in made:
        daemon.stop()
    for daemon in made:
        assert not daemon.tracebacks(), daemon.log()


def _gave_up(daemon: ExporterProcess) -> float | None:
    return daemon.value("blockpull_disks", rule="faults", state="gave_up")


# -- the domain goes away mid-pull -----------------------------------------------------------


def _pull_until_stopped(
    conn: libvirt.virConnect,
    domains: Domains,
    folder: Path,
    workdir: Path,
    daemons: list[ExporterProcess],
    stop: list[str],
) -> tuple[ExporterProcess, Subject]:
    subject = faults.make_subject(conn, domains.names, folder)
    daemon = _daemon(workdir, subject.domain, "1MiB/s")
    daemons.append(daemon)
    daemon.start()
    faults.wait_cursor_above(conn, subject.domain, 0)
    subprocess.run(["virsh", "-c", helpers.URI, *stop, subject.domain], check=True, timeout=30)
    assert helpers.wait_for(lambda: not conn.lookupByName(subject.domain).isActive(), 30)
    stopped = {"reason": "domain_stopped", **subject.labels()}
    daemon.wait_value("blockpull_jobs_aborted_total", equals=1, timeout=10, **stopped)
    time.sleep(1)  # more reconciles: nothing else is counted, nothing restarted
    faults.assert_counts(daemon, subject, started=1, aborted=1)
    assert daemon.value("blockpull_disks", rule="faults", state="not_running") == 1
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is None
    assert subject.content_unchanged()
    return daemon, subject


def test_destroyed_domain_mid_pull_is_aborted_domain_stopped(
    libvirt_conn: libvirt.virConnect,
    domains: Domains,
    image_folder: Path,
    workdir: Path,
    daemons: list[ExporterProcess],
) -> None:
    _pull_until_stopped(libvirt_conn, domains, image_folder, workdir, daemons, ["destroy"])


def test_domain_shut_down_by_qemu_mid_pull_is_aborted_domain_stopped(
    libvirt_conn: libvirt.virConnect,
    domains: Domains,
    image_folder: Path,
    workdir: Path,
    daemons: list[ExporterProcess],
) -> None:
    # A guest without an OS ignores ACPI; QMP `quit` makes QEMU exit by itself, the way a
    # guest power-off does (libvirt reports "shutdown"), unlike `destroy`, which kills it.
    quit_qmp = ["qemu-monitor-command", "--cmd", '{"execute": "quit"}', "--domain"]
    _pull_until_stopped(libvirt_conn, domains, image_folder, workdir, daemons, quit_qmp)


# -- a backing store that dies ---------------------------------------------------------------


@pytest.fixture
def nbd(image_folder: Path) -> Iterator[NbdServer]:
    base = image_folder / "base.raw"
    helpers.run("qemu-img", "create", "-q", "-f", "raw", base, "64M")
    helpers.run("qemu-io", "-f", "raw", "-c", f"write -P {helpers.BASE_PATTERN:#x} 0 32M", base)
    base.chmod(0o644)
    server = NbdServer(base)
    server.start()
    yield server
    server.kill()


def test_dead_backing_store_fails_retries_gives_up_and_recovers_after_a_reload(
    libvirt_conn: libvirt.virConnect,
    domains: Domains,
    image_folder: Path,
    workdir: Path,
    daemons: list[ExporterProcess],
    nbd: NbdServer,
) -> None:
    top = helpers.create_nbd_overlay(image_folder, nbd.url, "top")
    chain = helpers.Chain((top,))
    subject = faults.start_subject(libvirt_conn, domains.names, image_folder, chain, "nbd")
    name = subject.domain
    daemon = _daemon(workdir, name, "1MiB/s", max_attempts=2)
    daemons.append(daemon)
    daemon.start()
    faults.wait_cursor_above(libvirt_conn, name, MIB)

    nbd.kill()
    daemon.wait_value("blockpull_jobs_failed_total", equals=1, timeout=15, **subject.labels())
    assert daemon.value("blockpull_disk_consecutive_failures", **subject.labels()) == 1
    # Retried after the 2 s backoff, fails again, and is given up after max_attempts (2).
    daemon.wait_value("blockpull_jobs_failed_total", equals=2, timeout=20, **subject.labels())
    daemon.wait_value("blockpull_disks", equals=1, timeout=5, rule="faults", state="gave_up")
    time.sleep(3)  # given up means given up: no third attempt
    faults.assert_counts(daemon, subject, started=2, failed=2)
    assert faults.job_info(libvirt_conn, name) == {}

    # QEMU 7.2's NBD client reconnects only after a request has failed on the dead
    # connection, a few seconds later: the first attempts after the store returns may still
    # fail, so the new policy allows a few more; each failure is counted like any other.
    nbd.start()
    faults.write_atomically(
        daemon.policy,
        _policy(name, "16MiB/s", max_attempts=4),
    )
    daemon.signal(signal.SIGHUP)
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=40, **subject.labels())
    failed = faults.counters(daemon, subject)["failed"]
    assert 2 <= failed <= 5
    faults.assert_counts(daemon, subject, started=int(failed) + 1, failed=int(failed), completed=1)
    assert _gave_up(daemon) == 0
    assert daemon.value("blockpull_disk_consecutive_failures", **subject.labels()) == 0
    faults.stop_domain(libvirt_conn, name)
    assert subject.content_unchanged()


# -- a full file system under the overlay ---------------------------------------------------


def test_full_overlay_file_system_fails_the_pull_and_keeps_the_guest_data(
    libvirt_conn: libvirt.virConnect,
    domains: Domains,
    image_folder: Path,
    workdir: Path,
    daemons: list[ExporterProcess],
) -> None:
    chain = helpers.create_chain(image_folder, name="full", fill_mib=32)
    with faults.tmpfs(image_folder / "small", "8M") as small:
        top = small / "top.qcow2"
        helpers.run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", chain.base, top)
        top.chmod(0o644)
        overlaid = helpers.Chain((chain.base, top))
        subject = faults.start_subject(
            libvirt_conn, domains.names, image_folder, overlaid, "enospc"
        )
        name = subject.domain
        daemon = _daemon(workdir, name, "64MiB/s", max_attempts=2)
        daemons.append(daemon)
        daemon.start()
        daemon.wait_value("blockpull_jobs_failed_total", equals=1, timeout=20, **subject.labels())
        daemon.wait_value("blockpull_disks", equals=1, timeout=20, rule="faults", state="gave_up")
        faults.assert_counts(daemon, subject, started=2, failed=2)
        assert faults.job_info(libvirt_conn, name) == {}
        # The pull's write error fails the job; the guest is not paused on an I/O error.
        state, reason = libvirt_conn.lookupByName(name).state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
        faults.stop_domain(libvirt_conn, name)
        assert subject.content_unchanged()
