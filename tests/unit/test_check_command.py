"""`blockpull-exporter check`: exit codes, OK lines, and errors that name line and YAML path."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import cli

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
EXAMPLE = ROOT / "policies" / "example.yaml"
GOOD = sorted((FIXTURES / "good").glob("*.yaml"))
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))


@pytest.fixture
def check_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real dispatcher with only `check` registered, so sibling commands cannot break it."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", {"check": cli.SUBCOMMANDS["check"]})


def expectation(path: Path) -> tuple[int, str]:
    """(line, yaml path) from the fixture's `# expect: LINE PATH` header; `-` = no path."""
    header = path.read_text().splitlines()[0]
    _, line, yaml_path = header.removeprefix("# expect:").split(" ")
    return int(line), "" if yaml_path == "-" else yaml_path


@pytest.mark.usefixtures("check_only")
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_policy_exits_1_naming_line_and_yaml_path(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line, yaml_path = expectation(path)
    assert cli.main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    prefix = f"{path}:{line}:"
    located = [m for m in err.splitlines() if m.startswith(prefix)]
    assert located, err
    if yaml_path:
        assert any(m.split(": ", 2)[1] == yaml_path for m in located), err
    else:
        assert any(m.split(": ", 1)[1] for m in located), err


@pytest.mark.usefixtures("check_only")
@pytest.mark.parametrize("path", [*GOOD, EXAMPLE], ids=lambda p: p.stem)
def test_good_policy_exits_0_with_an_ok_line(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: OK (version 1, ")
    assert err == ""


@pytest.mark.usefixtures("check_only")
def test_ok_line_summarises_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["check", str(EXAMPLE)])
    out = capsys.readouterr().out.splitlines()[-1]
    assert out == f"{EXAMPLE}: OK (version 1, 3 windows, 4 rules, timezone Europe/Berlin)"


@pytest.mark.usefixtures("check_only")
def test_ok_line_names_host_local_time_and_singulars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "one.yaml"
    path.write_text("version: 1\nwindows:\n  w: {days: [sun]}\nrules:\n  - name: r\n")
    assert cli.main(["check", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"{path}: OK (version 1, 1 window, 1 rule, timezone host local)\n"
    )


@pytest.mark.usefixtures("check_only")
def test_every_error_of_a_file_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    path = FIXTURES / "bad" / "merge-key.yaml"
    assert cli.main(["check", str(path)]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 2


@pytest.mark.usefixtures("check_only")
def test_one_bad_file_among_good_ones_fails_the_run_but_all_are_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = FIXTURES / "bad" / "unknown-window.yaml"
    assert cli.main(["check", str(EXAMPLE), str(bad), str(GOOD[0])]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2
    assert str(bad) in err


@pytest.mark.usefixtures("check_only")
def test_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(tmp_path / "absent.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.usefixtures("check_only")
def test_dash_reads_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"version: 1\n")))
    assert cli.main(["check", "-"]) == 0
    assert capsys.readouterr().out.startswith("<stdin>: OK")


@pytest.mark.usefixtures("check_only")
def test_help_describes_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["check", "--help"])
    assert caught.value.code == 0
    assert "Exit status" in capsys.readouterr().out


@pytest.mark.usefixtures("check_only")
def test_no_file_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["check"])
    assert caught.value.code == 2


def test_check_through_the_full_dispatcher(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def test_python_dash_m_exporter_check_as_ansible_would_call_it() -> None:
    bad = FIXTURES / "bad" / "unknown-window.yaml"
    good = subprocess.run(
        [sys.executable, "-m", "exporter", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert (good.returncode, good.stderr) == (0, "")
    assert good.stdout.startswith(f"{EXAMPLE}: OK")
    failed = subprocess.run(
        [sys.executable, "-m", "exporter", "check", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert failed.returncode == 1
    assert f"{bad}:9:" in failed.stderr
