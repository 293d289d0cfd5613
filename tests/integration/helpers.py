"""Real qcow2 chains and small TCG domains for integration tests (reused by other suites).

Images live in a fresh folder under /var/lib/libvirt/images: QEMU runs as libvirt-qemu and
cannot enter a 0700 mkdtemp folder. Domains are `<domain type='qemu'>`, 64 MiB, no graphics,
started paused: block jobs run while the guest sits in firmware.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from exporter.core.model import HostEvent

URI = "qemu:///system"
IMAGES_ROOT = Path("/var/lib/libvirt/images")
MIB = 1024 * 1024
BASE_PATTERN = 0xAB
MID_PATTERN = 0xCD


@dataclass(frozen=True)
class Chain:
    """qcow2 images, base first and top last; `backing` is the chain as libvirt reports it."""

    images: tuple[Path, ...]

    @property
    def top(self) -> Path:
        return self.images[-1]

    @property
    def base(self) -> Path:
        return self.images[0]

    @property
    def backing(self) -> tuple[str, ...]:
        return tuple(str(p) for p in reversed(self.images[:-1]))


@dataclass(frozen=True)
class DiskSpec:
    target: str  # vda, vdb, ...
    source: Path
    source_format: str = "qcow2"
    readonly: bool = False


LIBVIRTD_LOCK = Path("/run/lock/blockpull-exporter-tests.lock")


@contextlib.contextmanager
def libvirtd_lock(exclusive: bool) -> Iterator[None]:
    """Shared for ordinary tests, exclusive for tests that stop or restart libvirtd."""
    LIBVIRTD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LIBVIRTD_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unique_name(label: str) -> str:
    return f"bpx-test-{uuid.uuid4().hex[:8]}-{label}"


def make_image_folder(label: str = "images") -> Path:
    folder = IMAGES_ROOT / unique_name(label)
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # QEMU (libvirt-qemu) must be able to enter it
    return folder


def remove_image_folder(folder: Path) -> None:
    if folder.parent == IMAGES_ROOT and folder.name.startswith("bpx-test-"):
        shutil.rmtree(folder, ignore_errors=True)


def run(*command: str | Path) -> str:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed: {done.stderr.strip()}")
    return done.stdout


def create_chain(
    folder: Path,
    name: str = "disk",
    depth: int = 1,
    size_mib: int = 64,
    fill_mib: int = 32,
    relative: bool = False,
) -> Chain:
    """A base holding `fill_mib` MiB of BASE_PATTERN, then `depth` qcow2 overlays.

    With depth >= 2 the first overlay also holds 8 MiB of MID_PATTERN after the base's data,
    so a partial pull down to the base copies something and a wrong base shows in the content.
    `relative`: overlays name their backing file relative to the folder.
    """
    base = folder / f"{name}-base.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", base, f"{size_mib}M")
    if fill_mib:
        run("qemu-io", "-c", f"write -P {BASE_PATTERN:#x} 0 {fill_mib}M", base)
    images = [base]
    for level in range(1, depth + 1):
        below = images[-1]
        image = folder / f"{name}-{level}.qcow2"
        backing = below.name if relative else str(below)
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, image)
        if level == 1 and depth >= 2:
            run("qemu-io", "-c", f"write -P {MID_PATTERN:#x} {fill_mib}M 8M", image)
        images.append(image)
    for image in images:
        image.chmod(0o644)
    return Chain(tuple(images))


def backing_file_name(image: Path) -> str:
    """The backing file name as written in the qcow2 header (relative or absolute)."""
    for line in run("qemu-img", "info", "-U", image).splitlines():  # header only: safe
        if line.startswith("backing file:"):
            return line.split(":", 1)[1].split(" (actual path")[0].strip()
    return ""


def flatten(image: Path, out: Path) -> Path:
    """The guest-visible content of `image` as a raw file, for a later compare."""
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out


def same_content(a: Path, b: Path) -> bool:
    """`qemu-img compare`; only meaningful once no QEMU has the images open."""
    done = subprocess.run(
        ["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"qemu-img compare {a} {b}: {done.stderr.strip()}")
    return done.returncode == 0


def domain_xml(name: str, disks: Sequence[DiskSpec]) -> str:
    devices = "".join(_disk_xml(d) for d in disks)
    return (
        f"<domain type='qemu'><name>{escape(name)}</name>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
        f"<on_poweroff>destroy</on_poweroff><devices>{devices}</devices></domain>"
    )


def _disk_xml(disk: DiskSpec) -> str:
    readonly = "<readonly/>" if disk.readonly else ""
    return (
        "<disk type='file' device='disk'>"
        f"<driver name='qemu' type='{disk.source_format}'/>"
        f"<source file='{escape(str(disk.source))}'/>"
        f"<target dev='{disk.target}' bus='virtio'/>{readonly}</disk>"
    )


def start_domain(
    conn: libvirt.virConnect, name: str, disks: Sequence[DiskSpec], persistent: bool = True
) -> libvirt.virDomain:
    """Started paused; `persistent` domains stay defined (shut off) after a destroy."""
    xml = domain_xml(name, disks)
    if not persistent:
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    dom = conn.defineXML(xml)
    dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    return dom


def define_domain(conn: libvirt.virConnect, name: str, disks: Sequence[DiskSpec]) -> None:
    conn.defineXML(domain_xml(name, disks))


def remove_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy and undefine, whatever state the domain is in; a missing domain is fine."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError:
            if dom.isActive():
                raise
    if dom.isPersistent():
        with contextlib.suppress(libvirt.libvirtError):  # gone meanwhile
            dom.undefine()


def stop_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy (QEMU flushes the qcow2 metadata on the way out) and wait until it is gone."""
    dom = conn.lookupByName(name)
    if dom.isActive():
        dom.destroy()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def next_event(
    events: queue.SimpleQueue[HostEvent], match: Callable[[HostEvent], bool], timeout: float
) -> HostEvent | None:
    """The first event satisfying `match` within `timeout` seconds; others are dropped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            event = events.get(timeout=left)
        except queue.Empty:
            return None
        if match(event):
            return event


def libvirt_unreachable_reason(uri: str = URI) -> str | None:
    """None when libvirtd answers on `uri`, else why not."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as error:
        return f"libvirtd unreachable at {uri}: {error.get_error_message()}"
    conn.close()
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_libvirt() -> None:
    """Skip the calling test when libvirtd is unreachable, unless CI is set: there it fails."""
    import pytest  # only tests call this; bench and scripts import helpers without pytest

    reason = libvirt_unreachable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI is set: integration tests must run; see scripts/setup)")
    pytest.skip(f"{reason}; run scripts/setup")


def create_raw_base(
    folder: Path, name: str = "base", size_mib: int = 64, fill_mib: int = 32
) -> Path:
    """A raw image holding `fill_mib` MiB of BASE_PATTERN, readable by libvirt-qemu."""
    base = folder / f"{name}.raw"
    run("qemu-img", "create", "-q", "-f", "raw", base, f"{size_mib}M")
    if fill_mib:
        run("qemu-io", "-f", "raw", "-c", f"write -P {BASE_PATTERN:#x} 0 {fill_mib}M", base)
    base.chmod(0o644)
    return base


def start_nbd(image: Path, port: int, export: str) -> subprocess.Popen[bytes]:
    """qemu-nbd serving raw `image` as nbd://127.0.0.1:port/export, persistent (-t), shared by
    several clients (qemu-img probes it while QEMU holds its own connection); waits until it
    listens. Stop it with `stop_nbd`."""
    process = subprocess.Popen(
        [
            "qemu-nbd",
            "-f",
            "raw",
            "-p",
            str(port),
            "-b",
            "127.0.0.1",
            "-t",
            "-e",
            "4",
            "-x",
            export,
            str(image),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(
                f"qemu-nbd exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    if not wait_for(listening, 15, 0.05):
        stop_nbd(process)
        raise RuntimeError(f"qemu-nbd does not listen on 127.0.0.1:{port}")
    return process


def stop_nbd(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, as a crashing storage server would go; a stopped process is fine."""
    if process.poll() is None:
        process.kill()
    process.wait(10)


def create_nbd_overlay(folder: Path, url: str, name: str = "nbd-top") -> Path:
    """A qcow2 overlay whose backing file is the raw NBD export at `url`."""
    top = folder / f"{name}.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", url, top)
    top.chmod(0o644)
    return top
