"""The retry and job memory survives restarts, and a corrupt file never stops the daemon."""

import json

from exporter.core.memory import Memory, TrackedJob
from exporter.core.model import DiskKey
from exporter.daemon.state_store import StateStore

KEY = DiskKey("web-1", "vda")


def remembered() -> Memory:
    memory = Memory().with_failure(KEY, 100.0, "fp-disk", "fp-policy")
    return memory.with_tracked(DiskKey("db-1", "vdb"), TrackedJob("/t/base.qcow2", 5.0, ("a",)))


def test_memory_round_trips_through_the_state_file(tmp_path):
    store = StateStore(tmp_path)
    store.save(remembered())
    assert StateStore(tmp_path).load() == remembered()


def test_a_missing_state_file_is_an_empty_memory(tmp_path):
    assert StateStore(tmp_path / "new").load() == Memory()


def test_saving_leaves_no_temporary_file_behind(tmp_path):
    StateStore(tmp_path).save(remembered())
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_corrupt_state_file_is_moved_aside_not_deleted(tmp_path):
    (tmp_path / "state.json").write_bytes(b"{not json")
    assert StateStore(tmp_path).load() == Memory()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.corrupt")]
    assert len(kept) == 1
    assert kept[0].read_bytes() == b"{not json"


def test_a_state_file_of_another_version_is_treated_as_corrupt(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"version": 99}))
    assert StateStore(tmp_path).load() == Memory()


def test_read_only_loading_never_moves_a_corrupt_file(tmp_path):
    (tmp_path / "state.json").write_bytes(b"\xff\xfe")
    assert StateStore(tmp_path).load_readonly() == Memory()
    assert (tmp_path / "state.json").exists()
