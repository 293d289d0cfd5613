"""Flag values are checked before anything starts: a bad one is one line naming it, exit 2."""

from __future__ import annotations

import pytest

from exporter.cli import build_parser, main


def run_with(*flags: str) -> list[str]:
    return ["run", "--policy.file", "p.yaml", *flags]


def refused_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The flag named by argparse's one error line; fails unless the command exits 2."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line for a journal, no usage text
    assert "error: argument " in lines[0]
    return lines[0].split("error: argument ", 1)[1].split(":", 1)[0]


@pytest.mark.parametrize("value", ["0", "-1", "0.5", "nan", "inf", "1e9", "soon"])
def test_a_resync_interval_out_of_bounds_is_refused(capsys, value):
    assert refused_flag(run_with("--resync.interval", value), capsys) == "--resync.interval"


@pytest.mark.parametrize("value", ["0", "-2", "0.01", "7200"])
def test_a_progress_interval_out_of_bounds_is_refused(capsys, value):
    assert refused_flag(run_with("--progress.interval", value), capsys) == "--progress.interval"


def test_a_status_watch_interval_of_zero_is_refused(capsys):
    assert refused_flag(["status", "--watch", "--interval", "0"], capsys) == "--interval"


@pytest.mark.parametrize("level", ["debug", "info", "warn", "warning", "error"])
def test_every_documented_log_level_is_accepted(level):
    assert build_parser("run").parse_args(run_with("--log.level", level)).log_level == level


def test_an_unknown_log_format_is_refused(capsys):
    assert refused_flag(run_with("--log.format", "xml"), capsys) == "--log.format"


@pytest.mark.parametrize("value", ["9855", "::1:9855", "host:99999", "host:port"])
def test_a_bad_listen_address_is_refused(capsys, value):
    argv = run_with("--web.listen-address", value)
    assert refused_flag(argv, capsys) == "--web.listen-address"


@pytest.mark.parametrize("command", ["run", "status", "plan"])
def test_a_relative_sim_uri_is_refused(capsys, command):
    argv = [command, "--policy.file", "p.yaml", "--libvirt.uri", "sim://x.json"]
    assert refused_flag(argv, capsys) == "--libvirt.uri"
