"""Harness pieces for the fault-injection suites: the daemon as a subprocess, its metrics,
policies that select only a test's own domains, libvirtd restarts, qemu-nbd and tmpfs.

Everything here cleans up after itself; the libvirtd helpers always leave libvirtd running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import helpers
import libvirt
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy_yaml(
    domains: Sequence[str],
    bandwidth: str = "2MiB/s",
    max_concurrent: int = 64,
    max_attempts: int = 5,
    backoff: str = "2s",
) -> str:
    """A policy whose only rule selects exactly `domains` (never a catch-all: other suites
    share this libvirtd)."""
    names = ", ".join(f'"{d}"' for d in domains)
    return (
        "version: 1\n"
        "defaults:\n"
        f"  bandwidth: {bandwidth}\n"
        f"  max_concurrent: {max_concurrent}\n"
        f"  retry: {{max_attempts: {max_attempts}, backoff: {backoff}, max_backoff: {backoff}}}\n"
        "rules:\n"
        "  - name: faults\n"
        f"    domains: [{names}]\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """How config management deploys a file: write aside, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@dataclass
class Daemon:
    """`blockpull-exporter run` on a free loopback port, with its log in `workdir`."""

    policy: Path
    state_dir: Path
    workdir: Path
    extra_args: Sequence[str] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"daemon-{self.runs}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20.0) -> None:
        """Starts and waits until /metrics shows a finished reconcile (or libvirt down)."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.runs += 1
        command = [
            sys.executable,
            "-m",
            "exporter",
            "run",
            "--policy.file",
            str(self.policy),
            "--libvirt.uri",
            helpers.URI,
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--state.dir",
            str(self.state_dir),
            "--log.level",
            "info",
            *self.extra_args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        ready = helpers.wait_for(self._ready, timeout, interval=0.1)
        if not ready:
            raise AssertionError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
        samples = self.try_metrics()
        if samples is None:
            return False
        up = samples.get(("blockpull_libvirt_up", frozenset()), 0.0)
        reconciled = ("blockpull_last_reconcile_success_timestamp_seconds", frozenset())
        return up == 0.0 or reconciled in samples

    def log(self) -> str:
        return "\n".join(
            self.workdir.joinpath(f"daemon-{run}.log").read_text(errors="replace")
            for run in range(1, self.runs + 1)
            if self.workdir.joinpath(f"daemon-{run}.log").exists()
        )

    def try_metrics(self) -> Samples | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                return parse_metrics(r.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> Samples:
        samples = self.try_metrics()
        assert samples is not None, f"/metrics did not answer:\n{self.log()}"
        return samples

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset(labels.items())))

    def wait_value(self, name: str, expected: float, timeout: float = 30.0, **labels: str) -> float:
        """Seconds until the metric reached `expected`; fails with the last value and log."""
        began = time.monotonic()
        if helpers.wait_for(lambda: self.value(name, **labels) == expected, timeout, 0.1):
            return time.monotonic() - began
        raise AssertionError(
            f"{name}{labels} is {self.value(name, **labels)}, not {expected}, "
            f"after {timeout} s:\n{self.log()[-6000:]}"
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds it took)."""
        began = time.monotonic()
        self.signal(signal.SIGTERM)
        assert self.process is not None
        code = self.process.wait(timeout)
        return code, time.monotonic() - began

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon process (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def tracebacks(self) -> list[str]:
        return [line for line in self.log().splitlines() if "Traceback" in line]


@contextlib.contextmanager
def running_daemon(
    policy: Path, state_dir: Path, workdir: Path, extra_args: Sequence[str] = ()
) -> Iterator[Daemon]:
    daemon = Daemon(policy, state_dir, workdir, extra_args)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


# -- jobs on the real host, read through the test's own connection ---------------------------


def job_info(conn: libvirt.virConnect, domain: str, disk: str = "vda") -> dict[str, int]:
    """{} when no job runs (or the domain is gone)."""
    try:
        dom = conn.lookupByName(domain)
        return dict(dom.blockJobInfo(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES))
    except libvirt.libvirtError:
        return {}


def cursor(conn: libvirt.virConnect, domain: str, disk: str = "vda") -> int:
    return int(job_info(conn, domain, disk).get("cur", 0))


def wait_cursor_above(
    conn: libvirt.virConnect, domain: str, floor: int, timeout: float = 30.0
) -> int:
    helpers.wait_for(lambda: cursor(conn, domain) > floor, timeout, 0.1)
    value = cursor(conn, domain)
    assert value > floor, f"{domain}: pull cursor {value} not above {floor}"
    return value


def wait_no_job(conn: libvirt.virConnect, domain: str, timeout: float = 60.0) -> None:
    assert helpers.wait_for(lambda: not job_info(conn, domain), timeout, 0.2), (
        f"{domain}: block job still running after {timeout} s"
    )


def chain_length(conn: libvirt.virConnect, domain: str) -> int:
    """Images below the top of vda in the live (or inactive) XML."""
    xml = conn.lookupByName(domain).XMLDesc(0)
    disk = xml.split("<target dev='vda'")[0].rsplit("<disk ", 1)[1]
    return disk.count("<backingStore type=")


# -- libvirtd ------------------------------------------------------------------------------


def libvirtd_pids() -> list[int]:
    done = subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def virsh_answers() -> bool:
    done = subprocess.run(
        ["virsh", "-c", helpers.URI, "version"], capture_output=True, timeout=20, check=False
    )
    return done.returncode == 0


def stop_libvirtd(timeout: float = 30.0) -> None:
    """SIGTERM every libvirtd and wait until none is left; QEMU processes live on."""
    for pid in libvirtd_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not helpers.wait_for(lambda: not libvirtd_pids(), timeout, 0.1):
        for pid in libvirtd_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert helpers.wait_for(lambda: not libvirtd_pids(), 10, 0.1), "libvirtd did not exit"


def start_libvirtd(timeout: float = 60.0) -> None:
    """`libvirtd -d` unless one runs; returns once virsh answers."""
    if not libvirtd_pids():
        subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    assert helpers.wait_for(virsh_answers, timeout, 0.2), "libvirtd does not answer"


@contextlib.contextmanager
def libvirtd_always_restored() -> Iterator[None]:
    """Whatever happens inside, libvirtd runs and answers afterwards."""
    try:
        yield
    finally:
        start_libvirtd()


def open_conn(timeout: float = 30.0) -> libvirt.virConnect:
    """A fresh connection (the session fixture's dies with libvirtd)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(helpers.URI)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- storage faults ------------------------------------------------------------------------


@dataclass
class NbdServer:
    """qemu-nbd exporting a raw image on a loopback TCP port, persistent (-t)."""

    image: Path
    name: str = "base"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.name}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "qemu-nbd",
                "-f",
                "raw",
                "-p",
                str(self.port),
                "-b",
                "127.0.0.1",
                "-t",
                "-x",
                self.name,
                "--shared=8",
                str(self.image),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert helpers.wait_for(self._listening, 10, 0.05), "qemu-nbd does not listen"

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str) -> Iterator[Path]:
    """A small tmpfs (mode 0755: QEMU runs as libvirt-qemu) unmounted on the way out."""
    mountpoint.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


# -- the subject of a test: one domain with one pullable disk --------------------------------


@dataclass(frozen=True)
class Subject:
    domain: str
    chain: helpers.Chain
    original: Path  # the guest-visible content before anything ran, raw

    def labels(self) -> dict[str, str]:
        return {"domain": self.domain, "disk": "vda"}

    def content_unchanged(self) -> bool:
        """Only meaningful once the domain has stopped."""
        return helpers.same_content(self.chain.top, self.original)


def make_subject(
    conn: libvirt.virConnect,
    names: list[str],
    folder: Path,
    label: str = "fault",
    fill_mib: int = 32,
) -> Subject:
    """A paused domain over a 1-deep chain; its name is appended to `names` for the cleanup."""
    chain = helpers.create_chain(folder, name=label, fill_mib=fill_mib)
    original = helpers.flatten(chain.top, folder / f"{label}-original.raw")
    name = helpers.unique_name(label)
    names.append(name)
    helpers.start_domain(conn, name, [helpers.DiskSpec("vda", chain.top)])
    return Subject(name, chain, original)


def stop_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy and wait until QEMU is gone, so the images are safe to compare."""
    dom = conn.lookupByName(name)
    if dom.isActive():
        dom.destroy()
    assert helpers.wait_for(lambda: not dom.isActive(), 30, 0.1)


def counters(daemon: Daemon, subject: Subject) -> dict[str, float]:
    """started/completed/failed and aborted (all reasons) for the subject's disk."""
    samples = daemon.metrics()
    labels = frozenset(subject.labels().items())
    result = {
        kind: samples.get((f"blockpull_jobs_{kind}_total", labels), 0.0)
        for kind in ("started", "completed", "failed")
    }
    result["aborted"] = sum(
        value
        for (name, lab), value in samples.items()
        if name == "blockpull_jobs_aborted_total" and labels <= lab
    )
    return result


def assert_counts(
    daemon: Daemon,
    subject: Subject,
    started: int = 0,
    completed: int = 0,
    failed: int = 0,
    aborted: int = 0,
) -> None:
    """The subject's counters, tolerating pulls aborted over_budget: other suites share this
    libvirtd, and their pulls are foreign jobs that take slots and bandwidth from our budget.
    Each such abort must come with exactly one extra start (the pull is started again)."""
    got = counters(daemon, subject)
    over = aborted_reason(daemon, subject, "over_budget")
    expected = {
        "started": started + over,
        "completed": completed,
        "failed": failed,
        "aborted": aborted + over,
    }
    assert got == expected, f"over_budget aborts: {over}\n{daemon.log()[-4000:]}"


def aborted_reason(daemon: Daemon, subject: Subject, reason: str) -> int:
    value = daemon.value("blockpull_jobs_aborted_total", **subject.labels(), reason=reason)
    return int(value or 0)


def fresh_conn() -> Iterator[libvirt.virConnect]:
    """Body of a per-test `libvirt_conn` override: conftest's is session-wide and dies when a
    libvirtd test (test_faults_libvirtd.py) restarts libvirtd earlier in the same session."""
    import pytest

    reason = helpers.libvirt_unreachable_reason()
    if reason is not None:
        if helpers.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    conn = libvirt.open(helpers.URI)
    yield conn
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()
