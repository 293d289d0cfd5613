"""Flag values are checked before anything starts: a bad one is one line naming it, exit 2."""

from __future__ import annotations

import pytest

from exporter.cli import build_parser, main


def run_with(tmp_path, *flags: str) -> list[str]:
    return ["run", "--policy.file", str(tmp_path / "p.yaml"), *flags]


@pytest.mark.parametrize("value", ["0", "-1", "0.5", "nan", "inf", "1e9", "soon"])
def test_a_resync_interval_out_of_bounds_exits_2_naming_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(run_with(tmp_path, "--resync.interval", value))
    assert exited.value.code == 2
    assert "argument --resync.interval:" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "0.01", "7200"])
def test_a_progress_interval_out_of_bounds_exits_2_naming_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(run_with(tmp_path, "--progress.interval", value))
    assert exited.value.code == 2
    assert "argument --progress.interval:" in capsys.readouterr().err


def test_a_status_watch_interval_of_zero_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["status", "--watch", "--interval", "0"])
    assert exited.value.code == 2
    assert "argument --interval:" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["debug", "info", "warn", "warning", "error"])
def test_every_documented_log_level_is_accepted(tmp_path, level):
    args = build_parser("run").parse_args(run_with(tmp_path, "--log.level", level))
    assert args.log_level == level


def test_an_unknown_log_format_exits_2_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(run_with(tmp_path, "--log.format", "xml"))
    assert exited.value.code == 2
    assert "argument --log.format:" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["9855", "::1:9855", "host:99999", "host:port"])
def test_a_bad_listen_address_exits_2_naming_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(run_with(tmp_path, "--web.listen-address", value))
    assert exited.value.code == 2
    assert "argument --web.listen-address:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "status", "plan"])
def test_a_relative_sim_uri_exits_2_naming_the_flag(capsys, command):
    with pytest.raises(SystemExit) as exited:
        main([command, "--policy.file", "p.yaml", "--libvirt.uri", "sim://x.json"])
    assert exited.value.code == 2
    assert "argument --libvirt.uri:" in capsys.readouterr().err
