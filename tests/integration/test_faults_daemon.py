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

import faults
import helpers
import libvirt
import pytest
from conftest import Domains
from exporter_process import ExporterProcess, policy_for_domains
from faults import Subject
from helpers import MIB


@pytest.fixture
def subject(libvirt_conn: libvirt.virConnect, domains: Domains, image_folder: Path) -> Subject:
    return faults.make_subject(libvirt_conn, domains.names, image_folder)


@pytest.fixture
def daemon(tmp_path: Path, subject: Subject) -> Iterator[ExporterProcess]:
    """Not started: each test writes its policy and starts it. After `subject`, so it is
    stopped before the domain is removed."""
    made = ExporterProcess(tmp_path, helpers.URI, ("--progress.interval", "0.5"), "info")
    yield made
    made.stop()
    assert not made.tracebacks(), made.log()


def _policy(subject: Subject, bandwidth: str) -> str:
    return policy_for_domains([subject.domain], bandwidth, max_concurrent=64, rule="faults")


def _set_policy(daemon: ExporterProcess, subject: Subject, bandwidth: str) -> None:
    daemon.policy.write_text(_policy(subject, bandwidth))


def _start_pulling(
    libvirt_conn: libvirt.virConnect,
    subject: Subject,
    daemon: ExporterProcess,
    bandwidth: str,
    copied_above: int = 0,
) -> int:
    """Start the daemon on the subject's policy and return once its pull has copied more than
    `copied_above` bytes; returns the cursor then."""
    _set_policy(daemon, subject, bandwidth)
    daemon.start()
    daemon.wait_value("blockpull_jobs_started_total", equals=1, timeout=10, **subject.labels())
    return faults.wait_cursor_above(libvirt_conn, subject.domain, copied_above)


def _tracked(daemon: ExporterProcess) -> list[dict[str, object]]:
    state = json.loads((daemon.state_dir / "state.json").read_text())
    return list(state["tracked"])


def test_sigkilled_daemon_adopts_the_running_pull_on_restart(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
) -> None:
    # 32 MiB: ~16 s
    before_kill = _start_pulling(libvirt_conn, subject, daemon, "2MiB/s", 2 * MIB)
    daemon.kill()

    daemon.start()
    # Tracked in the state file: adopted silently, neither started again nor aborted.
    seen = [faults.cursor(libvirt_conn, subject.domain)]
    faults.wait_cursor_above(libvirt_conn, subject.domain, seen[0] + MIB)
    assert faults.counters(daemon, subject) == faults.expected_counters()
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is not None
    while faults.job_info(libvirt_conn, subject.domain):  # the cursor never goes back
        seen.append(faults.cursor(libvirt_conn, subject.domain))
        time.sleep(0.2)
    assert all(b >= a for a, b in itertools.pairwise(seen) if b), seen
    assert min(s for s in seen if s) >= before_kill
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    assert faults.counters(daemon, subject) == faults.expected_counters(completed=1)
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_pull_finished_while_the_daemon_was_down_is_counted_once(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
) -> None:
    _start_pulling(libvirt_conn, subject, daemon, "8MiB/s")  # 32 MiB: ~4 s
    daemon.kill()
    faults.wait_no_job(libvirt_conn, subject.domain, 30)
    assert faults.chain_length(libvirt_conn, subject.domain) == 0

    daemon.start()
    daemon.wait_value("blockpull_jobs_completed_total", equals=1, timeout=10, **subject.labels())
    time.sleep(2)  # a few more reconciles and progress ticks
    assert faults.counters(daemon, subject) == faults.expected_counters(completed=1)
    assert _tracked(daemon) == []
    daemon.terminate()

    daemon.start()  # the settled pull is not remembered as running: never counted again
    time.sleep(1.5)
    assert faults.counters(daemon, subject) == faults.expected_counters()
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_sigterm_exits_promptly_and_leaves_the_pull_running(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
) -> None:
    at_term = _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    code, took = daemon.terminate()
    assert code == 0, daemon.log()
    assert took < 5, took
    faults.wait_cursor_above(libvirt_conn, subject.domain, at_term + MIB // 2)
    assert len(_tracked(daemon)) == 1  # handed over to the next start

    daemon.start()
    time.sleep(1.5)
    assert faults.counters(daemon, subject)["started"] == 0  # adopted, not restarted
    assert faults.counters(daemon, subject)["aborted"] == 0
    assert daemon.value("blockpull_job_cursor_bytes", **subject.labels()) is not None
    daemon.stop()
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_sigterm_with_abort_pulls_aborts_the_pull_first(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
) -> None:
    daemon.extra_args = (*daemon.extra_args, "--shutdown.abort-pulls")
    _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    code, took = daemon.terminate()
    assert code == 0, daemon.log()
    assert took < 5, took
    assert faults.job_info(libvirt_conn, subject.domain) == {}
    assert faults.chain_length(libvirt_conn, subject.domain) == 1  # aborted, not finished
    assert "shutdown" in daemon.log()
    assert _tracked(daemon) == []
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


def test_corrupt_state_file_is_moved_aside_and_the_daemon_works(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
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
    assert faults.counters(daemon, subject) == faults.expected_counters(started=1, completed=1)
    assert json.loads((daemon.state_dir / "state.json").read_text())["version"] == 1
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()


BROKEN_POLICIES = {
    "invalid": "version: 1\ndefaults: {bandwidth: fast}\nrules: []\n",
    "truncated": None,  # the good file cut in the middle of a line
    "empty": "",
    "deleted": None,
}


def test_broken_policy_files_keep_the_last_good_policy(
    libvirt_conn: libvirt.virConnect, subject: Subject, daemon: ExporterProcess
) -> None:
    _start_pulling(libvirt_conn, subject, daemon, "1MiB/s")
    good = daemon.policy.read_text()
    reload_ok = "blockpull_policy_last_reload_successful"
    for kind, text in BROKEN_POLICIES.items():
        if kind == "deleted":
            daemon.policy.unlink()
        elif kind == "truncated":
            faults.write_atomically(daemon.policy, good[: good.index("domains:") + 14])
        else:
            assert text is not None
            faults.write_atomically(daemon.policy, text)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value(reload_ok, equals=0, timeout=5)
        time.sleep(1.2)  # the file watcher runs too: still the old policy, still one pull
        assert daemon.value(reload_ok) == 0, kind
        info = faults.job_info(libvirt_conn, subject.domain)
        assert info.get("bandwidth") == MIB, (kind, info)
        assert daemon.value("blockpull_budget_bandwidth_bytes_per_second") == MIB, kind
        faults.write_atomically(daemon.policy, good)
        daemon.signal(signal.SIGHUP)
        daemon.wait_value(reload_ok, equals=1, timeout=5)
    # A changed good policy takes effect on the running pull.
    faults.write_atomically(daemon.policy, _policy(subject, "4MiB/s"))
    daemon.wait_value(reload_ok, equals=1, timeout=5)
    assert helpers.wait_for(
        lambda: faults.job_info(libvirt_conn, subject.domain).get("bandwidth") == 4 * MIB, 5
    )
    assert faults.counters(daemon, subject)["started"] == 1
    assert faults.counters(daemon, subject)["aborted"] == 0
    daemon.stop()
    faults.stop_domain(libvirt_conn, subject.domain)
    assert subject.content_unchanged()
