"""`hold`, `release` and `holds` on a state directory: what an operator types and reads."""

import pytest
from freezegun import freeze_time

from exporter.cli import main
from exporter.daemon.hold_store import HoldStore

NOW = "2026-11-26 10:00:00"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@freeze_time(NOW)
def test_hold_lasts_an_hour_by_default_and_is_listed(tmp_path, capsys):
    code, out, _ = run(capsys, "hold", "--state.dir", str(tmp_path), "--reason", "backup", "web-*")
    assert code == 0
    assert out == "held web-* until 2026-11-26T11:00:00Z (1h left): backup\n"
    code, out, _ = run(capsys, "holds", "--state.dir", str(tmp_path))
    assert code == 0
    assert "web-*    2026-11-26T11:00:00Z  1h" in out


@freeze_time(NOW)
def test_holding_a_held_glob_again_renews_it(tmp_path, capsys):
    run(capsys, "hold", "--state.dir", str(tmp_path), "--for", "10m", "web-*")
    run(capsys, "hold", "--state.dir", str(tmp_path), "--for", "2h", "web-*")
    (only,) = HoldStore(tmp_path).read().holds
    assert only.until - only.since == 7200


@pytest.mark.parametrize("duration", ["0s", "8d", "forever", "-1h"])
def test_a_hold_must_end_within_a_week(tmp_path, capsys, duration):
    with pytest.raises(SystemExit) as exit_:
        main(["hold", "--state.dir", str(tmp_path), f"--for={duration}", "web-*"])
    assert exit_.value.code == 2
    assert "--for" in capsys.readouterr().err
    assert not (tmp_path / "holds").exists()


def test_a_glob_with_a_control_character_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "hold", "--state.dir", str(tmp_path), "web-\x1b[2J")
    assert code == 2
    assert "control character" in err
    assert not (tmp_path / "holds").exists()


@freeze_time(NOW)
def test_release_ends_the_holds_its_glob_matches_and_names_those_still_in_force(tmp_path, capsys):
    run(capsys, "hold", "--state.dir", str(tmp_path), "web-*", "web-3", "db-1")
    code, out, err = run(capsys, "release", "--state.dir", str(tmp_path), "web-3")
    assert code == 0
    assert out.startswith("released web-3 ")
    assert "still held: web-3 by web-*" in err
    code, out, _ = run(capsys, "release", "--state.dir", str(tmp_path), "web-*")
    assert out.startswith("released web-* ")
    assert [h.domains for h in HoldStore(tmp_path).read().holds] == ["db-1"]


@freeze_time(NOW)
def test_release_all_ends_every_hold(tmp_path, capsys):
    run(capsys, "hold", "--state.dir", str(tmp_path), "web-*", "db-1")
    assert run(capsys, "release", "--state.dir", str(tmp_path), "--all")[0] == 0
    assert HoldStore(tmp_path).read().holds == ()


def test_releasing_what_is_not_held_says_so_and_succeeds(tmp_path, capsys):
    code, _, err = run(capsys, "release", "--state.dir", str(tmp_path), "web-*")
    assert code == 0
    assert "no hold matches 'web-*'" in err


def test_holds_on_an_unreadable_file_says_every_domain_is_held_and_fails(tmp_path, capsys):
    store = HoldStore(tmp_path)
    store.directory.mkdir()
    store.path.write_text("{")
    code, out, _ = run(capsys, "holds", "--state.dir", str(tmp_path))
    assert code == 1
    assert out.startswith("every domain is held: the holds file is unreadable")
