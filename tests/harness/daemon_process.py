"""The real daemon, `blockpull-exporter run`, as a subprocess for end-to-end and fault tests.

`DaemonProcess` runs it on a free loopback port with its policy file, state dir and logs in
one work dir; it can be killed or terminated and started again (each run logs to its own
daemon-<n>.log), and reads and waits for values on its own /metrics. `running_daemon_process(
policy, uri, workdir)` is the usual way in: started, and stopped in a finally whatever happens.
On the shared libvirtd it refuses, at each start, a policy that could select someone else's
domain (own_names.require_own_policy).

No libvirt import here: the unit test of the README's metrics table runs it against the
simulated host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.core.model import DiskKey
from harness.loopback import free_port
from harness.own_names import require_own_policy
from harness.policy_files import write_policy

REPO = Path(__file__).resolve().parents[2]  # the daemon runs from the repository root
READY_TIMEOUT = 60.0
START_ATTEMPTS = 3  # free_port() races with every other process on the machine
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NO_LABELS: frozenset[tuple[str, str]] = frozenset()
RECONCILED = "blockpull_last_reconcile_success_timestamp_seconds"
RECONCILES = "blockpull_reconcile_duration_seconds_count"  # successful or not
LIBVIRT_UP = "blockpull_libvirt_up"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def daemon_command() -> list[str]:
    """The installed console script beside this interpreter (.venv/bin), else `-m exporter`."""
    script = Path(sys.executable).parent / "blockpull-exporter"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]


def parse_metrics(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass
class DaemonProcess:
    """The daemon with `workdir`/policy.yaml and `workdir`/state on `uri`.

    Not started on construction, so a test can write its policy (or a broken state file)
    first; start() again after kill() or terminate() is a restart on the same state dir.
    `own_domains_only`: refuse a policy that may select others' domains; off only where the
    host is private (the simulated host) or the run is read-only by design.
    """

    workdir: Path
    uri: str
    extra_args: Sequence[str] = ()
    log_level: str = "debug"
    own_domains_only: bool = True
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def policy(self) -> Path:
        return self.workdir / "policy.yaml"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Runs the daemon and waits until its first reconcile has finished (or found libvirt
        down); a port taken by someone else meanwhile is retried on a fresh one."""
        assert not self.running(), "already running"
        if self.own_domains_only:
            require_own_policy(self.policy)
        for _ in range(START_ATTEMPTS):
            self._launch()
            if self._wait_ready(timeout):
                return
            if self.running() or "cannot listen" not in self._run_log(self.runs):
                self.stop()
                raise AssertionError(f"daemon not ready in {timeout:.0f} s\n{self.describe()}")
            self.port = free_port()
        raise AssertionError(f"daemon found no free port in {START_ATTEMPTS} attempts")

    def _launch(self) -> None:
        self.runs += 1
        command = [
            *daemon_command(),
            "run",
            "--policy.file",
            str(self.policy),
            "--libvirt.uri",
            self.uri,
            "--web.listen-address",
            self.address,
            "--state.dir",
            str(self.state_dir),
            "--log.level",
            self.log_level,
            *self.extra_args,
        ]
        with self._log_path(self.runs).open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )

    def _wait_ready(self, timeout: float) -> bool:
        """True once ready; False if the process died or the time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if self._ready():
                return True
            time.sleep(0.1)
        return False

    def _ready(self) -> bool:
        """A reconcile finished: successfully, or failing with libvirt down (a daemon must
        start and answer without libvirtd). libvirt_up alone is 0 before the first one."""
        body = self.try_scrape()
        if body is None:
            return False
        samples = parse_metrics(body)
        if (RECONCILED, NO_LABELS) in samples:
            return True
        tried = samples.get((RECONCILES, NO_LABELS), 0.0) >= 1
        return tried and samples.get((LIBVIRT_UP, NO_LABELS)) == 0.0

    def signal(self, signum: int) -> None:
        assert self.process is not None, "never started"
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took), so a test can hold it to a prompt exit."""
        began = time.monotonic()
        self.signal(signal.SIGTERM)
        assert self.process is not None
        code = self.process.wait(timeout)
        return code, time.monotonic() - began

    def stop(self, grace: float = 20.0) -> None:
        """Cleanup, whatever state it is in: SIGTERM, SIGKILL after `grace` seconds."""
        if not self.running():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def cpu_seconds(self) -> float:
        """utime + stime of the running daemon (all its threads), from /proc."""
        assert self.process is not None, "never started"
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    # -- logs --------------------------------------------------------------------------------

    def _log_path(self, run: int) -> Path:
        return self.workdir / f"daemon-{run}.log"

    def _run_log(self, run: int) -> str:
        path = self._log_path(run)
        return path.read_text(errors="replace") if path.exists() else ""

    def log(self) -> str:
        """Every run's log, oldest first: a restarted daemon's story spans several."""
        return "\n".join(self._run_log(run) for run in range(1, self.runs + 1))

    def tracebacks(self) -> list[str]:
        return [line for line in self.log().splitlines() if "Traceback" in line]

    def describe(self) -> str:
        """For failure messages: where it runs, whether it still does, and the log's tail."""
        if self.process is None:
            state = "never started"
        else:
            state = "running" if self.running() else f"exit {self.process.returncode}"
        return f"daemon on {self.address} ({state}), log tail:\n{self.log()[-6000:]}"

    # -- /metrics ----------------------------------------------------------------------------

    def try_scrape(self) -> str | None:
        """The /metrics body, or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as r:
                return r.read().decode()
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
        """The sample with exactly these labels (`key`: domain and disk), None if absent."""
        if key is not None:
            labels = {"domain": key.domain, "disk": key.disk, **labels}
        return self.samples().get((name, frozenset(labels.items())))

    def wait_value(
        self,
        name: str,
        *,
        equals: float | None = None,
        at_least: float | None = None,
        timeout: float = 30.0,
        key: DiskKey | None = None,
        **labels: str,
    ) -> float:
        """Seconds until the sample `equals` (or reached `at_least`) a value; fails with the
        last value and the daemon's log. Exactly one of the two."""
        if (equals is None) == (at_least is None):
            raise TypeError("wait_value takes exactly one of equals= and at_least=")
        began = time.monotonic()
        deadline = began + timeout
        while True:
            value = self.value(name, key, **labels)
            if value is not None and (value == equals if at_least is None else value >= at_least):
                return time.monotonic() - began
            if time.monotonic() > deadline:
                wanted = f"== {equals}" if at_least is None else f">= {at_least}"
                shown = {**({"key": str(key)} if key else {}), **labels}
                raise AssertionError(
                    f"{name}{shown} is {value}, not {wanted}, after {timeout:.0f} s\n"
                    f"{self.describe()}"
                )
            time.sleep(0.1)


@contextlib.contextmanager
def running_daemon_process(
    policy: str,
    uri: str,
    workdir: Path,
    extra_args: Sequence[str] = (),
    own_domains_only: bool = True,
) -> Iterator[DaemonProcess]:
    """The daemon with `policy` (YAML text) on `uri`, ready; stopped on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = DaemonProcess(workdir, uri, extra_args, own_domains_only=own_domains_only)
    write_policy(daemon.policy, policy)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
