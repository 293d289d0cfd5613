"""The systemd unit, sysusers.d and tmpfiles.d snippets, checked with systemd's own tools.

systemd is not PID 1 on the build machines, but systemd-analyze, systemd-sysusers and
systemd-tmpfiles all work offline: `verify` parses the unit like the manager would, `security
--offline=yes` scores the sandbox, and the other two apply their snippets to a temporary root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD_DIR / "blockpull-exporter.service"
SYSUSERS = SYSTEMD_DIR / "sysusers.d" / "blockpull-exporter.conf"
TMPFILES = SYSTEMD_DIR / "tmpfiles.d" / "blockpull-exporter.conf"
DEFAULTS = SYSTEMD_DIR / "blockpull-exporter.default"
DAEMON = "/usr/bin/blockpull-exporter"
MAX_EXPOSURE = 2.0


def require_tool(name: str) -> str:
    """The tool's path; skip without it, unless under CI where a missing tool is a failure."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required under CI")
        pytest.skip(f"{name} not installed (Debian package systemd)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def verify(unit_text: str, directory: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports for a unit; empty means clean.

    The daemon is not installed where tests run, so its path is pointed at an executable that
    exists; everything else is verified as written. verify exits 0 on unknown or malformed
    directives and only warns on stderr, so any stderr line counts as a problem.
    """
    tool = require_tool("systemd-analyze")
    stand_in = shutil.which("true") or "/bin/true"
    unit = directory / UNIT.name
    unit.write_text(unit_text.replace(DAEMON, stand_in))
    result = run(tool, "verify", "--man=no", str(unit))
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited {result.returncode}")
    return problems


def exposure(unit_path: Path) -> float:
    tool = require_tool("systemd-analyze")
    result = run(tool, "security", "--offline=yes", "--no-pager", str(unit_path))
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def directives(text: str) -> dict[str, list[str]]:
    """`Key` -> every value assigned in the unit, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == []


def test_verify_reports_a_misspelled_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("PrivateTmp=yes", "PrivatTmp=yes")
    assert any("PrivatTmp" in line for line in verify(broken, tmp_path))


def test_verify_reports_a_malformed_value(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=perhaps")
    assert verify(broken, tmp_path) != []


def test_sandbox_exposure_is_at_most_two() -> None:
    assert exposure(UNIT) <= MAX_EXPOSURE


def test_exposure_check_can_fail(tmp_path: Path) -> None:
    unhardened = tmp_path / UNIT.name
    unhardened.write_text("[Service]\nExecStart=/bin/true\n")
    assert exposure(unhardened) > MAX_EXPOSURE


def test_unit_is_notify_with_watchdog() -> None:
    found = directives(UNIT.read_text())
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["WatchdogSec"] == ["60"]


def test_policy_is_checked_before_start_and_before_reload() -> None:
    found = directives(UNIT.read_text())
    check = f"{DAEMON} check ${{POLICY}}"
    assert found["ExecStartPre"] == [check]
    # /bin/kill is procps', not on a minimal Debian: the shell's builtin sends the signal.
    assert found["ExecReload"] == [check, """/bin/sh -c 'kill -HUP "$$MAINPID"'"""]


def test_execstart_passes_every_setting_flag() -> None:
    (exec_start,) = directives(UNIT.read_text())["ExecStart"]
    assert exec_start.split() == [
        DAEMON,
        "run",
        "--policy.file",
        "${POLICY}",
        "--libvirt.uri",
        "${LIBVIRT_URI}",
        "--web.listen-address",
        "${LISTEN_ADDRESS}",
        "--state.dir",
        "/var/lib/blockpull-exporter",
        "$ARGS",
    ]


def test_state_dir_flag_matches_state_directory() -> None:
    found = directives(UNIT.read_text())
    assert found["StateDirectory"] == ["blockpull-exporter"]
    assert "--state.dir /var/lib/blockpull-exporter" in found["ExecStart"][0]


def test_runs_as_static_user_in_libvirt_group() -> None:
    found = directives(UNIT.read_text())
    assert found["User"] == ["blockpull-exporter"]
    assert found["SupplementaryGroups"] == ["libvirt"]
    assert "DynamicUser" not in found


def test_only_unix_and_inet_sockets_are_allowed() -> None:
    found = directives(UNIT.read_text())
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "IPAddressDeny" not in found  # Prometheus must reach /metrics


def test_proc_keeps_the_files_process_metrics_read() -> None:
    # ProcSubset=pid hides /proc/stat; prometheus_client's ProcessCollector then drops every
    # process_* metric without an error.
    assert "ProcSubset" not in directives(UNIT.read_text())


def test_denied_system_calls_fail_with_an_error_instead_of_killing() -> None:
    assert directives(UNIT.read_text())["SystemCallErrorNumber"] == ["EPERM"]


def test_environment_file_is_optional_and_sets_every_variable_the_unit_uses() -> None:
    found = directives(UNIT.read_text())
    assert found["EnvironmentFile"] == ["-/etc/default/blockpull-exporter"]
    defaults = {value.split("=", 1)[0] for value in found["Environment"]}
    used = set(re.findall(r"\$\{?([A-Z_]+)\}?", " ".join(found["ExecStart"])))
    assert used - {"MAINPID"} <= defaults
    documented = set(re.findall(r"^#?([A-Z_]+)=", DEFAULTS.read_text(), re.MULTILINE))
    assert defaults == documented


def test_sysusers_creates_the_user_in_the_libvirt_group(tmp_path: Path) -> None:
    tool = require_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = run(tool, f"--root={tmp_path}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    assert re.search(r"^blockpull-exporter:x:\d+:\d+:.*:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^libvirt:x:\d+:blockpull-exporter$", group, re.M)


def test_tmpfiles_creates_config_dir_readable_by_the_daemon_group_only(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    tmpfiles = require_tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to chown in the temporary root")
    (tmp_path / "etc").mkdir()
    assert run(sysusers, f"--root={tmp_path}", str(SYSUSERS)).returncode == 0
    result = run(tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES))
    assert result.returncode == 0, result.stderr
    config = tmp_path / "etc" / "blockpull-exporter"
    group = (tmp_path / "etc" / "group").read_text()
    match = re.search(r"^blockpull-exporter:x:(\d+):", group, re.M)
    assert match
    stat = config.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (0, int(match.group(1)), 0o750)


def test_retried_failed_starts_reach_the_start_limit() -> None:
    # Restart=on-failure also retries a start refused by ExecStartPre (a broken policy); the
    # retries come RestartSec apart, so the unit ends failed only if StartLimitBurst of them
    # fit in StartLimitIntervalSec (systemd's default, 5 in 10 s, never fills at 5 s apart).
    found = directives(UNIT.read_text())
    assert found["Restart"] == ["on-failure"]
    (restart_sec,) = found["RestartSec"]
    assert restart_sec.endswith("s")
    (burst,) = found["StartLimitBurst"]
    (interval,) = found["StartLimitIntervalSec"]
    assert int(burst) * float(restart_sec.removesuffix("s")) < int(interval)
