"""The daemon itself fails: SIGKILL, SIGTERM, a corrupt state file, broken policy files.

Each test runs `blockpull-exporter run` as a subprocess against qemu:///system, with a policy
that selects only the test's own domain, and reads the daemon's own /metrics.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from harness.daemon_process import DaemonProcess
from harness.fault_subject import Subject, counters, expected_counters, make_subject
from harness.ground_truth import block_job, cursor, live_chain, wait_cursor_above, wait_no_job
from harness.libvirt_lab import Lab, stop_domain
from harness.libvirtd import URI
from harness.policy_files import policy_for_domains, write_policy
from harness.qemu_images import MIB
from harness.waiting import wait_for


@pytest.fixture
def subject(domains: Lab) -> Subject:
    return make_subject(domains)


@pytest.fixture
def daemon(tmp_path: Path, subject: Subject) -> Iterator[DaemonProcess]:
    """Not started: each test writes its policy and starts it. After `subject`, so it is
    stopped before the domain is removed."""
    made = DaemonProcess(tmp_path, URI, ("--progress.interval", "0.5"), "info")
    yield made
    made.stop()
    assert not made.tracebacks(), made.log()


def _policy(subject: Subject, bandwidth: str) -> str:
    return policy_for_domains([subject.domain], bandwidth, max_concurrent=64, rule_name="faults")


def _set_policy(daemon: DaemonProcess, subject: Subject, bandwidth: str) -> None:
    write_policy(daemon.policy, _policy(subject, bandwidth))


def _start_pulling(
    libvirt_conn: libvirt.virConnect,
    subject: Subject,
    daemon: DaemonProcess,
    bandwidth: str,
    copied_above: int = 0,
) -> int:
    """Start the daemon on the subject's policy and return once its pull has copied more than
    `copied_above` bytes; returns the cursor then."""
    _set_policy(daemon, subject, bandwidth)
    daemon.start()
    daemon.wait_value("blockpull_jobs_started_total", equals=1, timeout=10, **subject.labels())
    return wait_cursor_above(libvirt_conn, subject.key, copied_above)


def _job_limit(conn: libvirt.virConnect, subject: Subject) -> int | None:
    """The running pull's bandwidth limit as libvirt reports it; None when no job runs."""
    job = block_job(conn, subject.key)
    return job.bandwidth if job is not None else None


def _tracked(daemon: DaemonProcess) -> list[dict[str, object]]:
    state = json.loads((daemon.state_dir / "state.json").read_text())
    return list(state["tracked"])


def test_sigkilled_daemon_adopts_the_running_pull_on_restart(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    # 32 MiB: ~16 s
    before_kill = _start_pulling(libvirt_conn, subject, daemon, "2MiB/s", 2 * MIB)
    daemon.kill()

    daemon.start()
    # Tracked in the state file: adopted silently, neither started again nor aborted.
    seen = [cursor(libvirt_conn, subject.key)]
    wait_cursor_above(libvirt_conn, subject.key, seen[0] + MIB)
    assert counters(daemon, subject) == expected_counters()
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is not None
    while block_job(libvirt_conn, subject.key) is not None:  # the cursor never goes back
        seen.append(cursor(libvirt_conn, subject.key))
        time.sleep(0.2)
    assert all(b >= a for a, b in itertools.pairwise(seen) if b), seen
    assert min(s for s in seen if s) >= before_kill
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    assert counters(daemon, subject) == expected_counters(completed=1)
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_pull_finished_while_the_daemon_was_down_is_counted_once(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    _start_pulling(libvirt_conn, subject, daemon, "8MiB/s")  # 32 MiB: ~4 s
    daemon.kill()
    wait_no_job(libvirt_conn, subject.key, 30)
    assert len(live_chain(libvirt_conn, subject.key)) == 0

    daemon.start()
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    time.sleep(2)  # a few more reconciles and progress ticks
    assert counters(daemon, subject) == expected_counters(completed=1)
    assert _tracked(daemon) == []
    daemon.terminate()

    daemon.start()  # the settled pull is not remembered as running: never counted again
    time.sleep(1.5)
    assert counters(daemon, subject) == expected_counters()
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_sigterm_exits_promptly_and_leaves_the_pull_running(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    at_term = _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    code, took = daemon.terminate()
    assert code == 0, daemon.log()
    assert took < 5, took
    wait_cursor_above(libvirt_conn, subject.key, at_term + MIB // 2)
    assert len(_tracked(daemon)) == 1  # handed over to the next start

    daemon.start()
    time.sleep(1.5)
    assert counters(daemon, subject)["started"] == 0  # adopted, not restarted
    assert counters(daemon, subject)["aborted"] == 0
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is not None
    daemon.stop()
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_sigterm_with_abort_pulls_aborts_the_pull_first(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    daemon.extra_args = (*daemon.extra_args, "--shutdown.abort-pulls")
    _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    code, took = daemon.terminate()
    assert code == 0, daemon.log()
    assert took < 5, took
    assert block_job(libvirt_conn, subject.key) is None
    assert len(live_chain(libvirt_conn, subject.key)) == 1  # aborted, not finished
    assert "shutdown" in daemon.log()
    assert _tracked(daemon) == []
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_corrupt_state_file_is_moved_aside_and_the_daemon_works(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    _set_policy(daemon, subject, "16MiB/s")
    daemon.state_dir.mkdir()
    garbage = b'{"version": 1, "failures": [{"domain": 3'  # cut mid-write
    (daemon.state_dir / "state.json").write_bytes(garbage)
    daemon.start()
    aside = list(daemon.state_dir.glob("state.json.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [garbage]
    assert "level=warn" in daemon.log() and "unreadable" in daemon.log()
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=20, **subject.labels())
    assert counters(daemon, subject) == expected_counters(started=1, completed=1)
    assert json.loads((daemon.state_dir / "state.json").read_text())["version"] == 1
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


BROKEN_POLICIES = {
    "invalid": "version: 1\ndefaults: {bandwidth: fast}\nrules: []\n",
    "truncated": None,  # the good file cut in the middle of a line
    "empty": "",
    "deleted": None,
}


def test_broken_policy_files_keep_the_last_good_policy(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: DaemonProcess
) -> None:
    _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    good = daemon.policy.read_text()
    reload_ok = "blockpull_policy_last_reload_successful"
    for kind, text in BROKEN_POLICIES.items():
        if kind == "deleted":
            daemon.policy.unlink()
        elif kind == "truncated":
            write_policy(daemon.policy, good[: good.index("domains:") + 14])
        else:
            assert text is not None
            write_policy(daemon.policy, text)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value(reload_ok, equals=0, timeout=5)
        time.sleep(1.2)  # the file watcher runs too: still the old policy, still one pull
        assert daemon.value(reload_ok) == 0, kind
        limit = _job_limit(libvirt_conn, subject)
        assert limit == MIB, (kind, limit)
        assert daemon.value("blockpull_budget_bandwidth_bytes_per_second") == MIB, kind
        write_policy(daemon.policy, good)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value(reload_ok, equals=1, timeout=5)
    # A changed good policy takes effect on the running pull.
    write_policy(daemon.policy, _policy(subject, "4MiB/s"))
    daemon.wait_value(reload_ok, equals=1, timeout=5)
    assert wait_for(lambda: _job_limit(libvirt_conn, subject) == 4 * MIB, 5)
    assert counters(daemon, subject)["started"] == 1
    assert counters(daemon, subject)["aborted"] == 0
    daemon.stop()
    stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()
