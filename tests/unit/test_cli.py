"""The command line: subcommands against the simulated host, so no libvirt is needed."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

from freezegun import freeze_time

from exporter.cli import main
from exporter.commands.status import CLEAR_SCREEN, eta, progress_bar, redraw
from exporter.core.clock import SystemClock
from exporter.core.memory import Memory
from exporter.core.model import BlockJob, DiskKey, JobType
from exporter.daemon.state_store import StateStore
from exporter.hosts.sim.state_file import open_sim_host
from exporter.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "policies" / "example.yaml"
# The example's windows are in Europe/Berlin: a Thursday 04:00 is inside `nights`,
# a Thursday 07:00 inside none of them.
NIGHTS_OPEN = "2026-11-26 03:00:00"
ALL_CLOSED = "2026-11-26 06:00:00"


def on_the_simulated_host(command: str, tmp_path: Path) -> int:
    """`command` with the example policy against a simulated host in tmp_path, whose state
    directory is tmp_path too."""
    uri = f"sim://{tmp_path}/host.json"
    return main(
        [command, "--policy.file", str(EXAMPLE), "--libvirt.uri", uri, "--state.dir", str(tmp_path)]
    )


def test_check_imports_neither_libvirt_nor_the_daemon():
    code = (
        "import sys; from exporter.cli import main; rc = main(['check', sys.argv[1]]);"
        "assert rc == 0; bad = {'libvirt', 'exporter.web.server', 'exporter.daemon.controller'} & "
        "set(sys.modules); assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code, str(EXAMPLE)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()


@freeze_time(NIGHTS_OPEN)
def test_plan_on_the_simulated_host_explains_every_disk_and_acts_on_nothing(tmp_path, capsys):
    assert on_the_simulated_host("plan", tmp_path) == 0
    first = capsys.readouterr().out
    assert on_the_simulated_host("plan", tmp_path) == 0
    assert capsys.readouterr().out.count("start pull of") == first.count("start pull of") > 0
    assert "db-1    vda   databases  ignored" in first


@freeze_time(NIGHTS_OPEN)
def test_status_on_the_simulated_host_shows_the_backlog(tmp_path, capsys):
    assert on_the_simulated_host("status", tmp_path) == 0
    out = capsys.readouterr().out
    assert out.startswith("0 block job(s) running")
    assert "backlog: 4 disk(s) to pull (4 pending)" in out


@freeze_time(ALL_CLOSED)
def test_status_outside_every_window_shows_the_backlog_waiting_for_one(tmp_path, capsys):
    assert on_the_simulated_host("status", tmp_path) == 0
    assert "backlog: 4 disk(s) to pull (4 waiting_window)" in capsys.readouterr().out


@freeze_time(NIGHTS_OPEN)
def test_plan_and_status_agree_on_a_disk_in_backoff_from_the_saved_state(tmp_path, capsys):
    key = DiskKey("web-1", "vda")
    _, disk = open_sim_host(f"sim://{tmp_path}/host.json", SystemClock()).observe().disks()[key]
    fingerprint = load_policy(EXAMPLE).fingerprint
    failed = Memory().with_failure(key, time.time() - 10, disk.fingerprint, fingerprint)
    StateStore(tmp_path).save(failed)

    assert on_the_simulated_host("plan", tmp_path) == 0
    plan_out = capsys.readouterr().out
    assert on_the_simulated_host("status", tmp_path) == 0
    status_out = capsys.readouterr().out
    [row] = [line.split() for line in plan_out.splitlines() if line.startswith("web-1 ")]
    assert row[:4] == ["web-1", "vda", "web", "backoff"]
    assert "backlog: 4 disk(s) to pull (1 backoff, 3 pending)" in status_out


@freeze_time(ALL_CLOSED)
def test_plan_outside_every_window_would_start_nothing(tmp_path, capsys):
    assert on_the_simulated_host("plan", tmp_path) == 0
    out = capsys.readouterr().out
    assert "start pull of" not in out
    assert "would do nothing" in out


def test_plan_refuses_an_invalid_policy_with_exit_1(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\n")
    assert main(["plan", "--policy.file", str(bad), "--libvirt.uri", f"sim://{tmp_path}/h"]) == 1
    assert "bad.yaml:1" in capsys.readouterr().err


def test_progress_bar_fills_in_proportion():
    assert progress_bar(50, 100) == "[############------------]  50%"


def test_eta_is_unknown_without_a_rate_and_absent_when_done():
    job = BlockJob(JobType.PULL, 10, 100, None)
    assert (eta(job, None), eta(job, 9.0), eta(BlockJob(JobType.PULL, 5, 5, None), 1.0)) == (
        "?",
        "10s",
        "-",
    )


def test_status_keys_render_as_domain_slash_disk():
    assert str(DiskKey("web-1", "vda")) == "web-1/vda"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_watch_clears_the_screen_only_on_a_terminal():
    terminal, pipe = _Terminal(), io.StringIO()
    redraw("frame", terminal)
    redraw("frame", pipe)
    assert terminal.getvalue() == CLEAR_SCREEN + "frame\n"
    assert "\x1b" not in pipe.getvalue() and pipe.getvalue() == "\nframe\n"
