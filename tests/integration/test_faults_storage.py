"""The storage or the domain under a pull fails: a destroyed or shut-down domain, a backing
store that dies (qemu-nbd killed), a full file system under the overlay (a small tmpfs)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest
from harness.daemon_process import DaemonProcess
from harness.failing_storage import NbdServer, tmpfs
from harness.fault_subject import Subject, assert_counts, counters, make_subject, start_subject
from harness.ground_truth import block_job, wait_cursor_above
from harness.libvirt_lab import Lab, stop_domain, wait_shut_off
from harness.libvirtd import URI
from harness.policy_files import policy_for_domains, write_policy
from harness.qemu_images import MIB, Chain, create_chain, create_overlay, create_raw_base, run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def _policy(
    domain: str, bandwidth: str, max_attempts: int = 5, min_free: str | int | None = None
) -> str:
    return policy_for_domains(
        [domain],
        bandwidth,
        max_concurrent=64,
        max_attempts=max_attempts,
        rule_name="faults",
        min_free=min_free,
    )


def _daemon(
    workdir: Path,
    domain: str,
    bandwidth: str,
    max_attempts: int = 5,
    min_free: str | int | None = None,
) -> DaemonProcess:
    made = DaemonProcess(workdir, URI, ("--progress.interval", "0.5"), "info")
    write_policy(made.policy, _policy(domain, bandwidth, max_attempts, min_free))
    return made


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    made: list[DaemonProcess] = []
    yield made
    for daemon in made:
        daemon.stop()
    for daemon in made:
        assert not daemon.tracebacks(), daemon.log()


def _gave_up(daemon: DaemonProcess) -> float | None:
    return daemon.value("blockpull_disks", rule="faults", state="gave_up")


# -- the domain goes away mid-pull -----------------------------------------------------------


def _pull_until_stopped(
    conn: libvirt.virConnect,
    domains: Lab,
    workdir: Path,
    daemons: list[DaemonProcess],
    stop: Callable[[str], None],
) -> tuple[DaemonProcess, Subject]:
    subject = make_subject(domains)
    daemon = _daemon(workdir, subject.domain, "1MiB/s")
    daemons.append(daemon)
    daemon.start()
    wait_cursor_above(conn, subject.key, 0)
    stop(subject.domain)
    wait_shut_off(conn, subject.domain, 30)  # and QEMU gone: the images are flushed
    stopped = {"reason": "domain_stopped", **subject.labels()}
    daemon.wait_value("blockpull_jobs_aborted_total", equals=1, timeout=10, **stopped)
    time.sleep(1)  # more reconciles: nothing else is counted, nothing restarted
    assert_counts(daemon, subject, started=1, aborted=1)
    assert daemon.value("blockpull_disks", rule="faults", state="not_running") == 1
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is None
    assert subject.content_unchanged()
    return daemon, subject


def test_destroyed_domain_mid_pull_is_aborted_domain_stopped(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    workdir: Path,
    daemons: list[DaemonProcess],
) -> None:
    _pull_until_stopped(libvirt_conn, domains, workdir, daemons, _destroy)


def test_domain_shut_down_by_qemu_mid_pull_is_aborted_domain_stopped(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    workdir: Path,
    daemons: list[DaemonProcess],
) -> None:
    # A guest without an OS ignores ACPI; QMP `quit` makes QEMU exit by itself, the way a
    # guest power-off does (libvirt reports "shutdown"), unlike `destroy`, which kills it.
    _pull_until_stopped(libvirt_conn, domains, workdir, daemons, _quit_qemu)


def _destroy(domain: str) -> None:
    run("virsh", "-c", URI, "destroy", domain)


def _quit_qemu(domain: str) -> None:
    """QMP `quit`. QEMU may exit before libvirt reads its reply: virsh then fails with the
    monitor's reset, yet QEMU quit as asked (the caller waits for the domain to stop)."""
    command = ["virsh", "-c", URI, "qemu-monitor-command", "--cmd", '{"execute": "quit"}']
    done = subprocess.run(
        [*command, "--domain", domain], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0 and "Unable to read from monitor" not in done.stderr:
        raise RuntimeError(f"QMP quit of {domain}: {done.stderr.strip()}")


# -- a backing store that dies ---------------------------------------------------------------


@pytest.fixture
def nbd(image_folder: Path, nbd_servers: list[NbdServer]) -> NbdServer:
    server = NbdServer(create_raw_base(image_folder, "base", size_mib=64, fill_mib=32))
    nbd_servers.append(server)
    server.start()
    return server


def test_dead_backing_store_fails_retries_gives_up_and_recovers_after_a_reload(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    image_folder: Path,
    workdir: Path,
    daemons: list[DaemonProcess],
    nbd: NbdServer,
) -> None:
    top = create_overlay(nbd.url, image_folder / "top.qcow2", backing_format="raw")
    subject = start_subject(domains, Chain((top,)), "nbd")
    name = subject.domain
    daemon = _daemon(workdir, name, "1MiB/s", max_attempts=2)
    daemons.append(daemon)
    daemon.start()
    wait_cursor_above(libvirt_conn, subject.key, MIB)

    nbd.kill()
    daemon.wait_value("blockpull_jobs_failed_total", equals=1, timeout=15, **subject.labels())
    assert daemon.value("blockpull_disk_consecutive_failures", **subject.labels()) == 1
    # Retried after the 2 s backoff, fails again, and is given up after max_attempts (2).
    daemon.wait_value("blockpull_jobs_failed_total", equals=2, timeout=20, **subject.labels())
    daemon.wait_value("blockpull_disks", equals=1, timeout=5, rule="faults", state="gave_up")
    time.sleep(3)  # given up means given up: no third attempt
    assert_counts(daemon, subject, started=2, failed=2)
    assert block_job(libvirt_conn, subject.key) is None

    # QEMU 7.2's NBD client reconnects only after a request has failed on the dead
    # connection, a few seconds later: the first attempts after the store returns may still
    # fail, so the new policy allows a few more; each failure is counted like any other.
    nbd.start()
    write_policy(daemon.policy, _policy(name, "16MiB/s", max_attempts=4))
    daemon.signal(signal.SIGHUP)
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=40, **subject.labels())
    failed = counters(daemon, subject)["failed"]
    assert 2 <= failed <= 5
    assert_counts(daemon, subject, started=int(failed) + 1, failed=int(failed), completed=1)
    assert _gave_up(daemon) == 0
    assert daemon.value("blockpull_disk_consecutive_failures", **subject.labels()) == 0
    stop_domain(libvirt_conn, name)
    assert subject.content_unchanged()


# -- a full file system under the overlay ---------------------------------------------------


def test_full_overlay_file_system_fails_the_pull_and_keeps_the_guest_data(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    image_folder: Path,
    workdir: Path,
    daemons: list[DaemonProcess],
) -> None:
    chain = create_chain(image_folder, name="full", fill_mib=32)
    with tmpfs(image_folder / "small", "8M") as small:
        top = create_overlay(chain.base, small / "top.qcow2")
        subject = start_subject(domains, Chain((chain.base, top)), "enospc")
        name = subject.domain
        # With the guard off: what happens when the file system fills anyway (min_free keeps
        # pulls from starting here at all, see test_guards.py).
        daemon = _daemon(workdir, name, "64MiB/s", max_attempts=2, min_free=0)
        daemons.append(daemon)
        daemon.start()
        daemon.wait_value("blockpull_jobs_failed_total", equals=1, timeout=20, **subject.labels())
        daemon.wait_value("blockpull_disks", equals=1, timeout=20, rule="faults", state="gave_up")
        assert_counts(daemon, subject, started=2, failed=2)
        assert block_job(libvirt_conn, subject.key) is None
        # The pull's write error fails the job; the guest is not paused on an I/O error.
        state, reason = libvirt_conn.lookupByName(name).state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
        stop_domain(libvirt_conn, name)
        assert subject.content_unchanged()
