"""Fault-specific pieces for the fault-injection suites: jobs read on the real host,
libvirtd stopped and restarted, qemu-nbd and tmpfs under a disk, the test's subject domain, and
the subject's counters. The daemon itself runs through exporter_process.ExporterProcess.

Everything here cleans up after itself; the libvirtd helpers always leave libvirtd running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import helpers
import libvirt
from exporter_process import ExporterProcess
from prometheus_server import free_port


def write_atomically(path: Path, text: str) -> None:
    """How config management deploys a file: write aside, then rename over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


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
    return start_subject(conn, names, folder, chain, label)


def start_subject(
    conn: libvirt.virConnect, names: list[str], folder: Path, chain: helpers.Chain, label: str
) -> Subject:
    """A paused domain whose vda is `chain.top`, its content kept aside in `folder` first; its
    name is appended to `names` for the cleanup."""
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


def expected_counters(
    started: int = 0, completed: int = 0, failed: int = 0, aborted: int = 0
) -> dict[str, float]:
    """What `counters` returns when the subject's disk saw exactly these."""
    return {"started": started, "completed": completed, "failed": failed, "aborted": aborted}


def counters(daemon: ExporterProcess, subject: Subject) -> dict[str, float]:
    """started/completed/failed and aborted (all reasons) for the subject's disk."""
    samples = daemon.samples()
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
    daemon: ExporterProcess,
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
    expected = expected_counters(started + over, completed, failed, aborted + over)
    assert got == expected, f"over_budget aborts: {over}\n{daemon.log()[-4000:]}"


def aborted_reason(daemon: ExporterProcess, subject: Subject, reason: str) -> int:
    value = daemon.value("blockpull_jobs_aborted_total", **subject.labels(), reason=reason)
    return int(value or 0)
