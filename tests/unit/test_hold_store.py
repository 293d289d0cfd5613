"""The holds file: atomic, shared between root's `hold` and the daemon's user, checked on read."""

import json
import os
import stat

import pytest

from exporter.core.holds import Hold
from exporter.daemon.hold_store import (
    MAX_FILE_BYTES,
    MAX_HOLD_SECONDS,
    HoldFileError,
    HoldStore,
)

NOW = 2_000_000.0
WEB = Hold("web-*", NOW, NOW + 3600, "evacuation", "ops")
DB = Hold("db-1", NOW, NOW + 60, "", "ops")


def placed(store: HoldStore, *holds: Hold, now: float = NOW) -> None:
    store.update(lambda kept: (*kept, *holds), now)


def test_holds_round_trip_through_the_file(tmp_path):
    store = HoldStore(tmp_path)
    placed(store, WEB, DB)
    assert HoldStore(tmp_path).read().holds == (WEB, DB)


def test_no_holds_file_is_no_hold(tmp_path):
    holds = HoldStore(tmp_path / "never-started").read()
    assert holds.holds == ()
    assert holds.error is None


def test_reading_creates_nothing(tmp_path):
    HoldStore(tmp_path / "state").read()
    assert not (tmp_path / "state").exists()


def test_writing_creates_private_directories_and_leaves_no_temporary_file(tmp_path):
    placed(HoldStore(tmp_path / "state"), WEB)
    holds_dir = tmp_path / "state" / "holds"
    assert stat.S_IMODE(holds_dir.stat().st_mode) == 0o700
    assert sorted(p.name for p in holds_dir.iterdir()) == [".lock", "holds.json"]
    assert stat.S_IMODE((holds_dir / "holds.json").stat().st_mode) == 0o600


def test_expired_holds_are_dropped_at_the_next_write(tmp_path):
    store = HoldStore(tmp_path)
    placed(store, WEB, DB)
    placed(store, now=NOW + 120)
    assert store.read().holds == (WEB,)


def test_the_stamp_changes_when_the_file_is_replaced_or_its_mode_changes(tmp_path):
    store = HoldStore(tmp_path)
    assert store.stamp() is None
    placed(store, WEB)
    first = store.stamp()
    placed(store, DB)
    second = store.stamp()
    store.path.chmod(0o640)
    assert len({first, second, store.stamp()}) == 3


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"version": 2, "holds": []}',
        b'{"version": 1, "holds": [{"domains": "", "since": 1, "until": 2, "reason": "", '
        b'"by": ""}]}',
        b'{"version": 1, "holds": [{"domains": "a", "since": "x", "until": 2, "reason": "", '
        b'"by": ""}]}',
        b'{"version": 1, "holds": [{"domains": "a\\u0007", "since": 1, "until": 2, '
        b'"reason": "", "by": ""}]}',
        b"[" * 100_000,
    ],
    ids=["not-json", "version", "empty-glob", "time-not-number", "control-char", "deep"],
)
def test_a_broken_holds_file_is_an_error_naming_it(tmp_path, content):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    store.path.write_bytes(content)
    holds = store.read()
    assert holds.error is not None
    assert str(store.path) in holds.error


def test_an_oversized_holds_file_is_refused_without_reading_it_all(tmp_path):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    store.path.write_bytes(b" " * (MAX_FILE_BYTES + 10))
    assert "larger than" in (store.read().error or "")


def test_a_special_file_in_place_of_the_holds_file_is_refused_not_waited_on(tmp_path):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    os.mkfifo(store.path)
    assert "not a regular file" in (store.read().error or "")


def test_a_symlinked_holds_directory_is_never_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    (state / "holds").symlink_to(elsewhere)
    with pytest.raises(HoldFileError, match="symbolic link"):
        placed(HoldStore(state), WEB)
    assert list(elsewhere.iterdir()) == []


def test_a_broken_file_is_not_overwritten_by_the_next_hold(tmp_path):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    store.path.write_bytes(b"{broken")
    with pytest.raises(HoldFileError, match=r"holds\.json"):
        placed(store, WEB)
    assert store.path.read_bytes() == b"{broken"


def test_a_hold_on_file_longer_than_the_maximum_is_cut_to_it(tmp_path):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    entry = {"domains": "a", "since": NOW, "until": NOW + 10 * MAX_HOLD_SECONDS, "reason": "",
             "by": "x"}  # fmt: skip
    store.path.write_text(json.dumps({"version": 1, "holds": [entry]}))
    assert store.read().holds[0].until == NOW + MAX_HOLD_SECONDS
