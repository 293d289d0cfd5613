"""A real Prometheus scrapes the real daemon while it runs real pulls on libvirt.

The daemon (`blockpull-exporter run`, a subprocess) has a policy naming only this test's
domains: other suites share this libvirtd. The two disks belong to two domains: QEMU 7.2
(Debian 12) segfaults when block-stream jobs on several disks of one domain complete. Pulls are
throttled by the policy's host budget so that they last about 10-15 s, long enough for a 1 s
scrape interval to see them move.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

from harness.daemon_process import DaemonProcess, running_daemon_process
from harness.libvirt_lab import DiskSpec, Lab
from harness.libvirtd import URI
from harness.policy_files import policy_for_domains
from harness.prometheus_server import PrometheusServer, running_prometheus
from harness.qemu_images import MIB, create_chain
from harness.waiting import wait_for

# Two disks sharing 16 MiB/s: 96 MiB each at 8 MiB/s is ~12 s. Suites running beside this one
# may slow it (their throttled jobs take part of the budget); the deadlines allow for that.
BUDGET = "16MiB/s"
FILL_MIB = 96
PROGRESS = ["--progress.interval", "0.5"]


def _domain_with_disk(domains: Lab, folder: Path, label: str, fill: int) -> str:
    chain = create_chain(folder, name=label, size_mib=128, fill_mib=fill)
    return domains.start(label, [DiskSpec("vda", chain.top)]).name()


def _context(daemon: DaemonProcess, prometheus: PrometheusServer) -> str:
    return f"{daemon.describe()}\n{prometheus.describe()}"


def _sample(prometheus: PrometheusServer, expr: str) -> float | None:
    values = list(prometheus.values(expr).values())
    return values[0] if len(values) == 1 else None


def test_prometheus_sees_pull_cursors_advance_and_pulls_complete(
    domains: Lab, image_folder: Path, tmp_path: Path
) -> None:
    names = [_domain_with_disk(domains, image_folder, f"scrape{n}", FILL_MIB) for n in (1, 2)]
    name = names[0]
    policy = policy_for_domains(names, bandwidth=BUDGET)
    with (
        running_daemon_process(policy, URI, tmp_path / "daemon", PROGRESS) as daemon,
        running_prometheus([daemon.address], tmp_path / "prometheus") as prometheus,
    ):
        context = lambda: _context(daemon, prometheus)  # noqa: E731
        for domain in names:
            completed = f'blockpull_jobs_completed_total{{domain="{domain}",disk="vda"}}'
            prometheus.wait_until(
                lambda c=completed: _sample(prometheus, c) == 1.0,
                timeout=180,
                what=f"{completed} == 1 in Prometheus",
                details=daemon.describe(),
            )
        cursor = f'blockpull_job_cursor_bytes{{domain="{name}",disk="vda"}}[5m]'
        series = prometheus.range_values(cursor)
        assert len(series) == 1, f"{cursor}: {series}\n{context()}"
        values = next(iter(series.values()))
        rises = sum(1 for a, b in itertools.pairwise(values) if b > a)
        assert rises >= 3, f"{cursor}: {values}\n{context()}"
        started = _sample(prometheus, f'blockpull_jobs_started_total{{domain="{name}",disk="vda"}}')
        if started == 1.0:  # one pull: its cursor never went back
            assert values == sorted(values), f"{cursor}: {values}\n{context()}"
        end = prometheus.range_values(f'blockpull_job_end_bytes{{domain="{name}",disk="vda"}}[5m]')
        assert 0 < max(values) <= max(next(iter(end.values()))) == 128 * MIB, context()


def test_promtool_check_metrics_accepts_a_live_scrape_during_a_pull(
    domains: Lab, image_folder: Path, tmp_path: Path
) -> None:
    name = _domain_with_disk(domains, image_folder, "promtool", 32)
    policy = policy_for_domains([name], bandwidth="1MiB/s")  # lasts ~30 s: still running
    with running_daemon_process(policy, URI, tmp_path / "daemon", PROGRESS) as daemon:
        key_labels = f'{{disk="vda",domain="{name}"}}'
        assert wait_for(
            lambda: f"blockpull_job_cursor_bytes{key_labels}" in daemon.scrape(), 60, 0.2
        ), f"no running pull in the scrape\n{daemon.describe()}"
        body = daemon.scrape()
        checked = subprocess.run(
            ["promtool", "check", "metrics"],
            input=body,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert f"blockpull_job_cursor_bytes{key_labels}" in body
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), body
