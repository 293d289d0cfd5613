"""A hostile or broken `--state.dir`: full, read-only, or something other than a regular file
where state.json should be. The daemon never dies of it, starts no pull it could not adopt
after a restart, leaves no temp file behind, and keeps its files private.

A full or read-only file system is simulated by making the save's fsync fail with ENOSPC, or
its temp file creation fail with EROFS (chmod does not stop root); one test uses a really full
tmpfs where one can be mounted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import snapshots as s
from builders import at, disk, domain, job, key, observation, policy
from prometheus_client.parser import text_string_to_metric_families
from test_controller import WEB1, make_controller, run_for, states, web_host, write_policy

from exporter.core.decisions import AbortPull, DiskState, StartPull
from exporter.core.memory import Memory, TrackedJob
from exporter.core.planner import plan
from exporter.daemon.state_store import StateStore
from exporter.metrics.renderer import render

WEB2 = key("web-2")
NOON = at("2026-01-01T12:00")


class BrokenStateDisk:
    """Makes state saves fail as a full file system (ENOSPC at fsync) or a read-only one (EROFS
    when the temp file is created) would, while `broken`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
        self.kind = kind
        self.broken = False
        real_fsync, real_mkstemp = os.fsync, tempfile.mkstemp

        def fsync(fd: int) -> None:
            if self.broken and kind == "full":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
            if self.broken and kind == "read-only":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))
            return real_mkstemp(*args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture(params=["full", "read-only"])
def state_disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> BrokenStateDisk:
    return BrokenStateDisk(monkeypatch, request.param)


def remembered() -> Memory:
    return Memory().with_tracked(WEB1, TrackedJob(None, 5.0, ("/t/base.qcow2",)))


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- saving -----------------------------------------------------------------------------------


def test_a_failed_save_raises_keeps_the_last_state_and_leaves_no_temp_file(tmp_path, state_disk):
    store = StateStore(tmp_path)
    store.save(Memory())
    state_disk.broken = True
    with pytest.raises(OSError):
        store.save(remembered())
    assert names(tmp_path) == ["state.json"]
    assert store.load() == Memory()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_the_state_file_is_0600_and_a_new_state_directory_0700_whatever_the_umask(tmp_path, umask):
    folder = tmp_path / "state"
    previous = os.umask(umask)
    try:
        StateStore(folder).save(remembered())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "state.json").stat().st_mode) == 0o600


def test_an_existing_state_directory_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)  # perhaps shared, as /tmp is
    StateStore(tmp_path).save(remembered())
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_saving_never_writes_through_a_link_planted_at_a_temp_name(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "state"
    folder.mkdir()
    # Where the temp file used to be, predictably: `.state.json.<pid>.tmp`.
    (folder / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    StateStore(folder).save(remembered())
    assert victim.read_text() == "precious"
    assert StateStore(folder).load() == remembered()


def test_a_link_at_the_state_path_is_replaced_on_save_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / "state.json").symlink_to(victim)
    StateStore(folder).save(remembered())
    assert victim.read_text() == "precious"
    assert stat.S_ISREG((folder / "state.json").lstat().st_mode)


# -- loading ----------------------------------------------------------------------------------


def _directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("kept")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link_to_a_valid_state(path: Path) -> None:
    target = path.parent.parent / "elsewhere.json"
    StateStore(path.parent.parent).save(remembered())
    (path.parent.parent / "state.json").rename(target)
    path.symlink_to(target)


NOT_REGULAR: dict[str, tuple[Callable[[Path], None], Callable[[int], bool]]] = {
    "a directory": (_directory, stat.S_ISDIR),
    "a FIFO": (_fifo, stat.S_ISFIFO),
    "a symbolic link": (_link_to_a_valid_state, stat.S_ISLNK),
}


@pytest.fixture(params=sorted(NOT_REGULAR))
def not_regular(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    folder = tmp_path / "state"
    folder.mkdir()
    make, _ = NOT_REGULAR[request.param]
    make(folder / "state.json")
    yield folder, request.param


@pytest.mark.timeout(10)  # a FIFO opened for reading would wait for a writer forever
def test_a_state_path_that_is_not_a_regular_file_is_moved_aside_and_memory_starts_empty(
    not_regular, caplog
):
    folder, kind = not_regular
    with caplog.at_level(logging.WARNING, logger="exporter.daemon.state_store"):
        assert StateStore(folder).load() == Memory()
    [aside] = [p for p in folder.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert NOT_REGULAR[kind][1](aside.lstat().st_mode)
    assert not os.path.lexists(folder / "state.json")
    assert f"is {kind}, not a regular file; moved to {aside}" in caplog.text


@pytest.mark.timeout(10)
def test_read_only_loading_of_a_state_path_that_is_not_a_regular_file_is_empty_and_moves_nothing(
    not_regular,
):
    folder, _ = not_regular
    before = names(folder)
    assert StateStore(folder).load_readonly() == Memory()
    assert names(folder) == before


def test_a_state_path_that_cannot_be_moved_aside_still_starts_empty(tmp_path, monkeypatch, caplog):
    (tmp_path / "state.json").mkdir()

    def read_only(self: Path, target: Any) -> Path:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "replace", read_only)
    with caplog.at_level(logging.WARNING, logger="exporter.daemon.state_store"):
        assert StateStore(tmp_path).load() == Memory()
    assert "is a directory, not a regular file and cannot be moved aside" in caplog.text


def test_moving_aside_never_replaces_an_earlier_one(tmp_path):
    earlier = tmp_path / f"state.json.corrupt-{os.getpid()}"
    earlier.write_text("earlier")
    (tmp_path / "state.json").write_text("{not json")
    assert StateStore(tmp_path).load() == Memory()
    assert earlier.read_text() == "earlier"
    assert (tmp_path / f"{earlier.name}.1").read_text() == "{not json"


# -- the planner ------------------------------------------------------------------------------


def test_the_planner_starts_nothing_while_the_state_cannot_be_saved():
    obs = observation(domain("web-1"), domain("web-2"))
    saved = plan(obs, policy(), NOON, Memory())
    unsaved = plan(obs, policy(), NOON, Memory(), state_saved=False)
    assert [type(a) for a in saved.actions] == [StartPull, StartPull]
    assert unsaved.actions == ()
    assert {d.state for d in unsaved.decisions} == {DiskState.PENDING}
    assert all("state cannot be saved" in d.reason for d in unsaved.decisions)


def test_running_pulls_go_on_while_the_state_cannot_be_saved():
    running = domain("web-1", disk(job=job(bandwidth=50)))
    obs = observation(running, domain("web-2"))
    tracked = Memory().with_tracked(WEB1, TrackedJob(None, 0.0, ()))
    result = plan(obs, policy(bandwidth=100), NOON, tracked, state_saved=False)
    assert not any(isinstance(a, AbortPull | StartPull) for a in result.actions)
    assert {d.key: d.state for d in result.decisions} == {
        WEB1: DiskState.PULLING,
        WEB2: DiskState.PENDING,
    }


# -- the daemon -------------------------------------------------------------------------------


def test_a_daemon_that_cannot_save_its_state_keeps_running_and_starts_no_pull(tmp_path, state_disk):
    host = web_host(count=2)
    state_disk.broken = True
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"), state=tmp_path / "s")
    run_for(controller, host, 120)
    snapshot = controller.snapshot
    assert host.calls()["start_pull"] == 0
    assert set(states(controller).values()) == {DiskState.PENDING}
    assert snapshot.last_reconcile_success_at is not None
    assert snapshot.last_reconcile_success_at > host.now() - 31  # resyncs every 30 s
    assert (snapshot.state_saved, snapshot.state_save_failures > 0) == (False, True)
    assert names(tmp_path / "s") == []  # no temp file left, however many attempts


def test_running_pulls_go_on_while_saves_fail_and_new_ones_wait_until_saving_works(
    tmp_path, state_disk
):
    host = web_host(count=2, size=100_000_000)
    policy_file = write_policy(tmp_path / "p.yaml", bandwidth="10MiB/s", max_concurrent=1)
    controller = make_controller(host, policy_file, state=tmp_path / "s")
    run_for(controller, host, 1)
    state_disk.broken = True
    run_for(controller, host, 60)  # web-1 completes meanwhile
    waited = (controller.snapshot.counters.completed.get(WEB1), host.job(WEB2))
    state_disk.broken = False
    run_for(controller, host, 31)  # the next resync saves, then plans
    assert waited == (1, None)
    assert host.job(WEB2) is not None
    assert controller.snapshot.state_saved


def test_a_failing_save_is_logged_once_and_its_recovery_once(tmp_path, state_disk, caplog):
    host = web_host(count=2)
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"), state=tmp_path / "s")
    with caplog.at_level(logging.INFO, logger="exporter.daemon.state_store"):
        state_disk.broken = True
        run_for(controller, host, 300)
        state_disk.broken = False
        run_for(controller, host, 31)
    about_state = [r for r in caplog.records if "the state" in r.getMessage()]
    assert [r.levelno for r in about_state] == [logging.ERROR, logging.INFO]
    assert controller.snapshot.state_save_failures > 1


def test_a_state_json_that_is_a_directory_does_not_stop_the_daemon(tmp_path):
    host = web_host()
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "state.json").mkdir()
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"), state=tmp_path / "s")
    run_for(controller, host, 60)
    assert controller.snapshot.counters.completed == {WEB1: 1}
    assert json.loads((tmp_path / "s" / "state.json").read_text())["version"] == 1


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, filled up; skipped where tmpfs cannot be mounted (not root, container)."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        with (
            (mount / "filler").open("wb", buffering=0) as filler,
            pytest.raises(OSError) as full,
        ):
            while filler.write(b"\0" * 4096):
                pass
        assert full.value.errno == errno.ENOSPC
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_state_directory_starts_no_pull_and_leaves_no_temp_file(tmp_path, full_tmpfs):
    host = web_host()
    controller = make_controller(host, write_policy(tmp_path / "p.yaml"), state=full_tmpfs)
    run_for(controller, host, 60)
    assert host.calls()["start_pull"] == 0
    assert not controller.snapshot.state_saved
    assert names(full_tmpfs) == ["filler"]


# -- metrics ----------------------------------------------------------------------------------


def _values(snapshot: Any) -> dict[str, float]:
    text = render(snapshot, "test").decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("blockpull_state_")
    }


def test_state_saves_show_in_a_gauge_and_a_failure_counter():
    fine = s.snapshot(s.plan())
    failing = replace(fine, state_saved=False, state_save_failures=3)
    assert _values(fine) == {
        "blockpull_state_last_save_successful": 1.0,
        "blockpull_state_save_failures_total": 0.0,
    }
    assert _values(failing) == {
        "blockpull_state_last_save_successful": 0.0,
        "blockpull_state_save_failures_total": 3.0,
    }
