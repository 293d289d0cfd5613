"""The installed service under a real systemd, once per install (the package; the README's pip
path). Each test starts from the service as the README left it (conftest's `service`)."""

from __future__ import annotations

import time

from conftest import GOOD_POLICY
from service import MIB, UNIT, Service, create_domain, remove_domain, wait_for

BROKEN_POLICY = GOOD_POLICY.replace("max_concurrent: 2", "max_concurrent: -1")
BROKEN_MESSAGE = "policy.yml:4:19: defaults.max_concurrent: must be at least 1, got -1"
# libvirtd's read-write socket: Debian's default (polkit decides), or the README's drop-in.
SOCKET = {"package": "666 root root", "pip": "770 root libvirt"}
AS_SERVICE_USER = "setpriv --reuid=blockpull-exporter --regid=blockpull-exporter --init-groups"
AS_OUTSIDER = "setpriv --reuid=nobody --regid=nogroup --clear-groups"


def test_the_install_makes_a_system_user_in_group_libvirt_and_a_root_owned_config_dir(
    installed: Service,
) -> None:
    run = installed.container.run
    assert "libvirt" in run("id -nG blockpull-exporter").stdout.split()
    assert run("getent passwd blockpull-exporter").stdout.strip().endswith(":/usr/sbin/nologin")
    assert run("stat -c '%U %G %a' /etc/blockpull-exporter").stdout.split() == [
        "root",
        "blockpull-exporter",
        "750",
    ]


def test_the_install_does_not_start_the_service_before_there_is_a_policy(
    installed: Service,
) -> None:
    # A start without /etc/blockpull-exporter/policy.yml would have logged `check`'s error.
    assert "No such file or directory" not in installed.journal()


def test_the_service_is_ready_and_reaches_libvirt_as_its_own_user(service: Service) -> None:
    # Type=notify: "active" means the daemon sent READY=1.
    assert (service.show("Type"), service.show("ActiveState"), service.show("SubState")) == (
        "notify",
        "active",
        "running",
    )
    user = service.container.run(f"stat -c %U /proc/{service.main_pid()}").stdout.strip()
    assert user == "blockpull-exporter"
    assert service.metric("blockpull_libvirt_up") == 1


def test_libvirt_admits_the_service_user_and_refuses_a_user_outside_its_group(
    service: Service,
) -> None:
    run = service.container.run
    socket = run("stat -c '%a %U %G' /run/libvirt/libvirt-sock").stdout.split()
    assert socket == SOCKET[service.how].split()
    assert run(f"{AS_SERVICE_USER} virsh -c qemu:///system list --all", check=False).returncode == 0
    outsider = run(f"{AS_OUTSIDER} virsh -c qemu:///system list --all", check=False)
    assert outsider.returncode != 0, outsider.stdout


def test_a_pull_completes_and_a_running_pull_is_adopted_across_a_restart(
    service: Service,
) -> None:
    domain = "bpx-pull"
    disk = {"domain": domain, "disk": "vda"}
    try:
        base = create_domain(service.container, domain, data_mib=32)  # ~8 s at 4 MiB/s
        service.wait_metric("blockpull_jobs_started_total", lambda v: v == 1, **disk)
        before = service.wait_metric("blockpull_job_cursor_bytes", lambda v: v > 0, **disk)
        assert before < 24 * MIB, "the pull went too fast to restart in the middle of it"
        pid = service.main_pid()

        service.systemctl("restart", UNIT)

        assert service.main_pid() != pid
        # Adopted from the state file: neither started again nor aborted, the cursor going on.
        after = service.wait_metric("blockpull_job_cursor_bytes", lambda v: v >= before, **disk)
        assert after >= before
        assert service.metric("blockpull_jobs_started_total", **disk) == 0
        assert service.sum_metric("blockpull_jobs_aborted_total", **disk) == 0
        service.wait_metric("blockpull_jobs_completed_total", lambda v: v == 1, 60, **disk)
        assert service.metric("blockpull_disk_backing_depth", **disk) == 0
        live = service.container.run(f"virsh -q dumpxml {domain}").stdout
        assert base not in live, "the live chain still names the base image"
    finally:
        remove_domain(service.container, domain)


def test_a_hold_by_root_stops_the_services_pull_within_a_second_and_release_resumes_it(
    service: Service,
) -> None:
    # The daemon runs as its own user in the unit's sandbox (ProtectSystem=strict,
    # PrivateUsers=yes); root places the hold in its 0700 state directory.
    domain = "bpx-hold"
    disk = {"domain": domain, "disk": "vda"}
    run = service.container.run
    try:
        create_domain(service.container, domain, data_mib=64)  # ~16 s at 4 MiB/s
        service.wait_metric("blockpull_jobs_started_total", lambda v: v == 1, **disk)
        # The sandboxed daemon measures the free space of the image folder's file system.
        assert service.sum_metric("blockpull_filesystem_free_bytes") > 0

        run(f"blockpull-exporter hold --for 10m --reason 'system test' {domain}")
        held_at = time.monotonic()
        service.wait_metric(
            "blockpull_jobs_aborted_total", lambda v: v == 1, timeout=5, reason="held", **disk
        )
        assert time.monotonic() - held_at < 3
        assert "No current block job" in run(f"virsh blockjob {domain} vda", check=False).stdout
        assert service.metric("blockpull_hold_expiry_timestamp_seconds", domains=domain)
        assert "system test" in run("blockpull-exporter holds").stdout
        assert run("stat -c %U /var/lib/blockpull-exporter/holds/holds.json").stdout.strip() == (
            "blockpull-exporter"
        )

        run(f"blockpull-exporter release {domain}")

        service.wait_metric("blockpull_jobs_started_total", lambda v: v == 2, timeout=5, **disk)
        service.wait_metric("blockpull_jobs_completed_total", lambda v: v == 1, 60, **disk)
    finally:
        run(f"blockpull-exporter release {domain}", check=False)
        remove_domain(service.container, domain)


def test_reload_applies_a_good_policy(service: Service) -> None:
    pid = service.main_pid()
    service.write_policy(GOOD_POLICY.replace("4MiB/s", "6MiB/s"))

    service.systemctl("reload", UNIT)

    service.wait_metric(
        "blockpull_budget_bandwidth_bytes_per_second", lambda v: v == 6 * MIB, timeout=5
    )
    assert service.metric("blockpull_policy_last_reload_successful") == 1
    assert service.main_pid() == pid


def test_reload_of_a_broken_policy_fails_and_the_last_good_policy_stays(
    service: Service,
) -> None:
    pid = service.main_pid()
    service.write_policy(BROKEN_POLICY)

    assert service.systemctl("reload", UNIT, check=False) != 0

    assert BROKEN_MESSAGE in service.journal()
    service.wait_metric("blockpull_policy_last_reload_successful", lambda v: v == 0, timeout=5)
    assert service.metric("blockpull_budget_bandwidth_bytes_per_second") == 4 * MIB
    assert (service.show("ActiveState"), service.main_pid()) == ("active", pid)


def test_the_watchdog_restarts_a_stopped_daemon(service: Service) -> None:
    # WatchdogSec=60 in the unit; 3 s here so that the test takes seconds, not minutes.
    dropin = f"/run/systemd/system/{UNIT}.d"
    service.container.run(
        f"mkdir -p {dropin}\nprintf '[Service]\\nWatchdogSec=3s\\n' >{dropin}/50-test.conf\n"
        f"systemctl daemon-reload\nsystemctl restart {UNIT}"
    )
    try:
        pid = service.main_pid()
        service.container.run(f"kill -STOP {pid}")

        wait_for(
            "a new daemon after the watchdog fired",
            lambda: service.main_pid() not in (0, pid) and service.show("SubState") == "running",
            timeout=30,
        )
        assert service.show("NRestarts") == "1"
        assert "Watchdog timeout" in service.journal()
        assert service.metric("blockpull_libvirt_up") == 1
    finally:
        service.container.run(f"rm -rf {dropin}\nsystemctl daemon-reload", check=False)
        service.systemctl("restart", UNIT, check=False)


def test_stop_is_quick_and_clean(service: Service) -> None:
    started = time.monotonic()
    service.systemctl("stop", UNIT)
    elapsed = time.monotonic() - started

    assert elapsed < 5, f"systemctl stop took {elapsed:.1f} s"
    assert (service.show("ActiveState"), service.show("Result")) == ("inactive", "success")
    assert service.show("ExecMainStatus") == "0"


def test_a_broken_policy_at_start_leaves_the_unit_failed_with_the_message_in_the_journal(
    service: Service,
) -> None:
    service.systemctl("stop", UNIT)
    service.write_policy(BROKEN_POLICY)
    service.systemctl("reset-failed", UNIT)  # the start limit counts from here
    seen = service.journal_lines()

    assert service.systemctl("start", UNIT, check=False) != 0

    # Retried RestartSec=5s apart; the third restart, the fourth start within
    # StartLimitIntervalSec=30s, is refused.
    wait_for("the unit to fail", lambda: service.show("ActiveState") == "failed", timeout=40)
    assert service.show("NRestarts") == "3"
    new = "\n".join(service.journal_lines()[len(seen) :])
    assert new.count(BROKEN_MESSAGE) == 3
    assert "Start request repeated too quickly" in new
    assert service.systemctl("start", UNIT, check=False) != 0, "a manual start got past the limit"


def test_a_libvirtd_restart_is_survived_without_raw_libvirt_errors_in_the_journal(
    service: Service,
) -> None:
    # libvirt's default error handler would print `libvirt: XML-RPC error : ...` lines for the
    # lost connection; the daemon routes them to its debug log and says it in its own words.
    seen = len(service.journal_lines())

    service.container.run("systemctl restart libvirtd.service")

    def reconnected() -> list[str] | None:
        lines = service.journal_lines()[seen:]
        return lines if any("lost the connection" in line for line in lines) else None

    new = wait_for("the daemon to see the connection drop", reconnected, timeout=20)
    service.wait_metric("blockpull_libvirt_up", lambda v: v == 1, timeout=20)
    assert [line for line in new if line.startswith("libvirt:")] == []
    assert "Traceback" not in service.journal()
