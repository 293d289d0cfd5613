"""The real daemon, `blockpull-exporter run`, as a subprocess for end-to-end tests.

`running_exporter(policy, uri, workdir)` starts it on a free loopback port with its own state
dir under `workdir`, waits until /metrics answers (optionally until a reconcile has finished),
and stops it with SIGTERM (SIGKILL after a grace period) in a finally. Its log is kept in
`workdir` for failure messages.

No libvirt import here: the unit test of the metrics table runs it against the simulated host.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import free_port

from exporter.model import DiskKey

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
RECONCILED = "blockpull_last_reconcile_success_timestamp_seconds"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def daemon_command() -> list[str]:
    """The installed console script beside this interpreter (.venv/bin), else `-m exporter`."""
    script = Path(sys.executable).parent / "blockpull-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]


def policy_for_domains(
    domains: Sequence[str],
    bandwidth: str = "6MiB/s",
    max_concurrent: int = 500,
    max_attempts: int = 5,
    backoff: str = "2s",
    max_backoff: str = "2s",
    rule: str = "e2e",
    window: str | None = None,
) -> str:
    """A policy whose only rule selects exactly `domains`, by name.

    Never a glob: other suites share this libvirtd, and a catch-all would pull their disks.
    max_concurrent is very high because jobs of other suites' domains count against it (they are
    foreign jobs to this daemon, each taking a slot). `window`: the name of a window open all
    day, every day, that the rule lists (so blockpull_window_active has a series).
    """
    if not domains:
        raise ValueError("a test policy must name its domains")
    for name in domains:
        if any(c in name for c in "*?[]"):
            raise ValueError(f"{name!r}: test policies name domains exactly, no globs")
    names = ", ".join(f'"{d}"' for d in domains)
    windows = f"windows:\n  {window}: {{days: daily}}\n" if window else ""
    rule_windows = f"    windows: [{window}]\n" if window else ""
    return (
        "version: 1\n"
        "defaults:\n"
        f"  bandwidth: {bandwidth}\n"
        f"  max_concurrent: {max_concurrent}\n"
        f"  retry: {{max_attempts: {max_attempts}, backoff: {backoff}, "
        f"max_backoff: {max_backoff}}}\n"
        f"{windows}"
        "rules:\n"
        f"  - name: {rule}\n"
        f"    domains: [{names}]\n"
        f"{rule_windows}"
    )


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class ExporterProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def describe(self) -> str:
        state = "running" if self.process.poll() is None else f"exit {self.process.returncode}"
        return f"daemon on {self.address} ({state}), log tail:\n{self.log()[-6000:]}"

    def try_scrape(self) -> str | None:
        """The /metrics body, or None when it does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def scrape(self) -> str:
        body = self.try_scrape()
        if body is None:
            raise AssertionError(f"/metrics did not answer\n{self.describe()}")
        return body

    def samples(self) -> Samples:
        return parse_metrics(self.scrape())

    def value(self, name: str, key: DiskKey | None = None, **labels: str) -> float | None:
        if key is not None:
            labels = {"domain": key.domain, "disk": key.disk, **labels}
        return self.samples().get((name, frozenset(labels.items())))

    def wait_value(
        self, name: str, at_least: float, timeout: float, key: DiskKey | None = None
    ) -> float:
        """Seconds until the sample reached `at_least`; fails with the daemon's log."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            value = self.value(name, key)
            if value is not None and value >= at_least:
                return time.monotonic() - began
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} {key} is {value}, not >= {at_least}, after {timeout:.0f} s\n"
                    f"{self.describe()}"
                )
            time.sleep(0.2)

    def reconciled(self) -> bool:
        body = self.try_scrape()
        return body is not None and f"\n{RECONCILED} " in body


@contextlib.contextmanager
def running_exporter(
    policy: str,
    uri: str,
    workdir: Path,
    extra_args: Sequence[str] = (),
    wait_reconciled: bool = True,
    attempts: int = 3,
) -> Iterator[ExporterProcess]:
    """The daemon with `policy` (YAML text) on `uri`; SIGTERM on the way out, whatever happens."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(policy)
    state_dir = workdir / "state"
    for attempt in range(1, attempts + 1):
        daemon = _start(policy_file, uri, state_dir, workdir / f"daemon-{attempt}.log", extra_args)
        try:
            if _wait_ready(daemon, wait_reconciled):
                yield daemon
                return
            if daemon.process.poll() is None or "cannot listen" not in daemon.log():
                raise AssertionError(f"daemon not ready in {READY_TIMEOUT} s\n{daemon.describe()}")
        finally:
            _stop(daemon.process)
    raise AssertionError(f"daemon found no free port in {attempts} attempts")


def _start(
    policy_file: Path, uri: str, state_dir: Path, log_path: Path, extra_args: Sequence[str]
) -> ExporterProcess:
    port = free_port()
    command = [
        *daemon_command(),
        "run",
        "--policy.file",
        str(policy_file),
        "--libvirt.uri",
        uri,
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--state.dir",
        str(state_dir),
        "--log.level",
        "debug",
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    return ExporterProcess(process, port, log_path)


def _wait_ready(daemon: ExporterProcess, wait_reconciled: bool) -> bool:
    """True once /metrics answers (after a reconcile if asked); False if the process died."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            return False
        if wait_reconciled and daemon.reconciled():
            return True
        if not wait_reconciled and daemon.try_scrape() is not None:
            return True
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
