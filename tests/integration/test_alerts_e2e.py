"""A real failing pull makes a real Prometheus, loaded with prometheus/alerts.yml as shipped,
fire BlockpullJobFailed; once the backing store is back, the daemon's retry succeeds.

The failing backing store: the disk's base is a raw image served by qemu-nbd; the
daemon starts a throttled pull of the overlay above it, and qemu-nbd is killed mid-pull, so
QEMU's reads fail and libvirt reports the job failed. qemu-nbd is then restarted on the same
port and the retry (policy backoff 2 s) completes the pull.

The rules file is a copy of prometheus/alerts.yml with one change: BlockpullJobFailed's `for:`
(5m as shipped, so that a blip does not notify) is cut to TEST_FOR, so the test waits seconds
instead of minutes; its expression, labels and annotations are those shipped. promtool's tests
(prometheus/alerts_test.yml) cover the shipped `for:`.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from harness.daemon_process import DaemonProcess, running_daemon_process
from harness.failing_storage import NbdServer
from harness.libvirt_lab import DiskSpec, Lab
from harness.libvirtd import URI
from harness.policy_files import policy_for_domains
from harness.prometheus_server import PrometheusServer, rules_copy, running_prometheus
from harness.qemu_images import create_overlay, create_raw_base, same_content

from exporter.core.model import DiskKey

ALERT = "BlockpullJobFailed"
TEST_FOR = "10s"
# 32 MiB at 2 MiB/s: ~16 s, so the kill lands mid-pull even on a loaded machine.
POLICY_BANDWIDTH = "2MiB/s"
PROGRESS = ["--progress.interval", "0.5"]


def rules_with_short_for(workdir: Path) -> Path:
    """The shipped rules with ALERT's `for:` cut to TEST_FOR (and nothing else changed)."""
    rules = yaml.safe_load(rules_copy(workdir).read_text())
    matching = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    assert len(matching) == 1 and "for" in matching[0], f"{ALERT} must be shipped with a for:"
    matching[0]["for"] = TEST_FOR
    path = workdir / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _context(daemon: DaemonProcess, prometheus: PrometheusServer) -> str:
    return f"{daemon.describe()}\n{prometheus.describe()}"


def _labels(key: DiskKey) -> str:
    return f'{{domain="{key.domain}",disk="{key.disk}"}}'


def test_failed_pull_fires_job_failed_alert_and_retry_succeeds_after_restore(
    domains: Lab,
    image_folder: Path,
    tmp_path: Path,
    nbd_servers: list[NbdServer],
) -> None:
    base = create_raw_base(image_folder, fill_mib=32)
    nbd = NbdServer(base)
    nbd_servers.append(nbd)
    nbd.start()
    top = create_overlay(nbd.url, image_folder / "nbd-top.qcow2", backing_format="raw")
    key = DiskKey(domains.start("alert", [DiskSpec("vda", top)]).name(), "vda")
    # Several attempts: QEMU's NBD client may fail the first retry while it reconnects.
    policy = policy_for_domains(
        [key.domain], bandwidth=POLICY_BANDWIDTH, max_attempts=8, backoff="2s"
    )
    rules = rules_with_short_for(tmp_path)
    with (
        running_daemon_process(policy, URI, tmp_path / "daemon", PROGRESS) as daemon,
        running_prometheus([daemon.address], tmp_path / "prometheus", rules) as prometheus,
    ):
        labels = _labels(key)
        # Prometheus must hold the pre-initialised 0 before the failure, or increase() misses it.
        prometheus.wait_until(
            lambda: (
                prometheus.values(f"blockpull_jobs_failed_total{labels} == 0")
                and prometheus.values(f"blockpull_job_cursor_bytes{labels} > 0")
            ),
            timeout=90,
            what=f"failed_total 0 and a moving cursor for {key} in Prometheus",
            details=daemon.describe(),
        )
        nbd.kill()  # the backing store dies mid-pull
        daemon.wait_value("blockpull_jobs_failed_total", at_least=1, timeout=60, key=key)
        nbd.start()  # and comes back, on the same port

        prometheus.wait_until(
            lambda: bool(prometheus.firing(ALERT, domain=key.domain, disk=key.disk)),
            timeout=70,
            what=f"{ALERT} firing for {key} in /api/v1/alerts",
            details=daemon.describe(),
        )
        alert = prometheus.firing(ALERT, domain=key.domain, disk=key.disk)[0]
        assert alert["labels"]["severity"] == "warning", alert
        assert alert["labels"]["job"] == "blockpull-exporter", alert

        daemon.wait_value("blockpull_jobs_completed_total", at_least=1, timeout=120, key=key)
        samples = daemon.samples()
        context = _context(daemon, prometheus)

    def value(name: str) -> float | None:
        return samples.get((name, frozenset({"domain": key.domain, "disk": key.disk}.items())))

    assert value("blockpull_jobs_started_total") >= 2, context  # the failed pull and a retry
    assert value("blockpull_disk_consecutive_failures") == 0, context  # reset by the success
    assert value("blockpull_disk_backing_depth") == 0, context  # the NBD base is not needed
    domains.stop(key.domain)  # QEMU flushes the overlay; then its content is the base's
    assert same_content(top, base), f"{top} differs from {base}"
