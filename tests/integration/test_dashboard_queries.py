"""Every query of every panel of the Grafana dashboard returns data from a real Prometheus that
scrapes the real daemon on a real host.

Grafana's variables are filled as on a default view (tests/dashboard_queries.py: every instance
and domain, 5m rate intervals). The host is put in the states the panels of NEEDS_STATE need,
rather than leaving those panels out:
- a pull running, throttled by a finite budget, long enough to have a rate (Throughput, Running
  pulls and its ETA, Throughput against budget, Throughput per disk);
- a disk whose pull failed: its base is served by qemu-nbd, killed before the daemon starts,
  so every attempt fails (Disks with failures);
- a successful reconcile (Last reconcile age);
- a policy window (Windows: a policy without windows has no blockpull_window_active series);
- a hold, on a glob that matches no domain of the test (Holds in force); the overlays are local
  files, so their file system is measured (Free space per file system).
The policy names only this test's domains: other suites share this libvirtd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dashboard_queries import NEEDS_STATE, concrete_expr, dashboard_queries
from harness.daemon_process import running_daemon_process
from harness.failing_storage import NbdServer
from harness.libvirt_lab import DiskSpec, Lab
from harness.libvirtd import URI
from harness.policy_files import policy_for_domains
from harness.prometheus_server import PrometheusServer, running_prometheus
from harness.qemu_images import create_chain, create_overlay, create_raw_base

from exporter.core.model import DiskKey

# What Grafana substitutes on a default view; the datasource is not part of any expr.
VARIABLES = {"instance": ".*", "domain": ".*", "__rate_interval": "1m", "__interval": "1m"}
PROGRESS = ["--progress.interval", "0.5"]


def _empty_queries(prometheus: PrometheusServer) -> list[tuple[str, str]]:
    return [
        (title, expr)
        for title, expr in ((t, concrete_expr(e, VARIABLES)) for t, e in dashboard_queries())
        if not prometheus.query(expr)
    ]


def test_every_dashboard_query_returns_data_while_pulls_run_and_one_fails(
    domains: Lab,
    image_folder: Path,
    tmp_path: Path,
    nbd_servers: list[NbdServer],
) -> None:
    assert set(NEEDS_STATE) <= {title for title, _ in dashboard_queries()}, "stale NEEDS_STATE"
    chain = create_chain(image_folder, name="slow", size_mib=256, fill_mib=128)
    running = DiskKey(domains.start("dash-pull", [DiskSpec("vda", chain.top)]).name(), "vda")

    nbd = NbdServer(create_raw_base(image_folder, fill_mib=8))
    nbd_servers.append(nbd)
    nbd.start()
    top = create_overlay(nbd.url, image_folder / "nbd-top.qcow2", backing_format="raw")
    failing = DiskKey(domains.start("dash-fail", [DiskSpec("vda", top)]).name(), "vda")
    nbd.kill()  # QEMU opened it; its reads now fail

    # 4 MiB/s shared by the running pull (and the failing one's brief attempts): 128 MiB last
    # the whole test. Two attempts, then the failing disk gives up (and stays failed). An
    # always-open window, so the Windows panel has a series.
    policy = policy_for_domains(
        [running.domain, failing.domain],
        bandwidth="4MiB/s",
        max_attempts=2,
        backoff="1s",
        window="always",
    )
    with (
        running_daemon_process(policy, URI, tmp_path / "daemon", PROGRESS) as daemon,
        running_prometheus([daemon.address], tmp_path / "prometheus") as prometheus,
    ):
        hold = ["hold", "--state.dir", str(daemon.state_dir), "bpx-dashboard-no-such-domain-*"]
        subprocess.run([sys.executable, "-m", "exporter", *hold], check=True, capture_output=True)
        daemon.wait_value(
            "blockpull_disk_consecutive_failures", at_least=1, timeout=90, key=failing
        )
        # All at once: a pull's series go stale (and its panels empty) as soon as it ends, so
        # job panels answering together proves they were queried while the pull ran.
        remaining: list[tuple[str, str]] = []

        def all_answer() -> bool:
            remaining[:] = _empty_queries(prometheus)
            return not remaining

        prometheus.wait_until(
            all_answer,
            timeout=120,
            what="every dashboard query returns data",
            details=lambda: "\n".join(
                [*(f"empty: {t}: {e}" for t, e in remaining), daemon.describe()]
            ),
        )
