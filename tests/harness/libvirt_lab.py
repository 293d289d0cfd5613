"""The domains and image folder of one test or benchmark run on the shared libvirtd.

A `Lab` names everything it makes with one unique prefix (own_names), remembers it before it
exists (a half-made domain is removed too) and `close()` removes all of it, whatever state the
run left. Images live in a fresh folder under /var/lib/libvirt/images: QEMU runs as
libvirt-qemu and cannot enter a 0700 mkdtemp folder. Domains are `<domain type='qemu'>`, 64 MiB,
no graphics, started paused: block jobs run while the guest sits in firmware.

Images are only safe to compare once QEMU has exited: `virsh destroy` or a guest's power-off
can return before the process is gone, so `stop_domain` and `wait_shut_off` wait for both the
state and the process.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from exporter.core.model import DiskKey
from harness.libvirtd import open_conn
from harness.own_names import is_own, require_own, unique_prefix
from harness.qemu_images import Chain, create_chain
from harness.waiting import wait_for

IMAGES_ROOT = Path("/var/lib/libvirt/images")
STOP_TIMEOUT = 30.0
CLEANUP_WORKERS = 8  # a destroy takes ~1-2 s; a benchmark removes hundreds of domains


@dataclass(frozen=True)
class DiskSpec:
    target: str  # vda, vdb, ...
    source: Path | str
    source_format: str = "qcow2"
    readonly: bool = False


# -- image folders -------------------------------------------------------------------------------


def make_image_folder(name: str) -> Path:
    """A fresh folder QEMU (libvirt-qemu) can enter; `name` must be a run's own."""
    require_own(name)
    folder = IMAGES_ROOT / name
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # whatever the umask
    return folder


def remove_image_folder(folder: Path) -> None:
    if folder.parent == IMAGES_ROOT and is_own(folder.name):
        shutil.rmtree(folder, ignore_errors=True)


# -- domains -----------------------------------------------------------------------------------


def domain_xml(name: str, disks: Sequence[DiskSpec], boot_disk: bool = False) -> str:
    """`boot_disk`: SeaBIOS boots the first disk (a guest that runs code from it)."""
    devices = "".join(_disk_xml(d) for d in disks)
    boot = "<boot dev='hd'/>" if boot_disk else ""
    return (
        f"<domain type='qemu'><name>{escape(name)}</name>"
        "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        f"<os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>"
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


def qemu_running(name: str) -> bool:
    """A QEMU process of domain `name` still exists (its command line says `guest=<name>,`)."""
    needle = f"guest={name},".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "cmdline").read_bytes():
                return True
        except OSError:  # exited meanwhile
            continue
    return False


def shut_off(conn: libvirt.virConnect, name: str) -> bool:
    """Shut off (persistent) or gone (transient), and its QEMU has exited."""
    try:
        stopped = not conn.lookupByName(name).isActive()
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
        stopped = True
    return stopped and not qemu_running(name)


def wait_shut_off(conn: libvirt.virConnect, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """Returns once the domain is shut off and its QEMU has exited, however it was stopped:
    only then has QEMU flushed the qcow2 metadata and are its images safe to compare."""
    if not wait_for(lambda: shut_off(conn, name), timeout, 0.1):
        raise AssertionError(f"{name} not shut off (or its QEMU still running) after {timeout} s")


def _destroy(dom: libvirt.virDomain) -> None:
    """Kill a running domain's QEMU; one that stopped meanwhile is fine."""
    if not dom.isActive():
        return
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if dom.isActive():
            raise


def stop_domain(conn: libvirt.virConnect, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """Destroy a run's own domain and wait until it is shut off and its QEMU has exited."""
    require_own(name)
    _destroy(conn.lookupByName(name))
    wait_shut_off(conn, name, timeout)


def remove_domain(conn: libvirt.virConnect, name: str) -> None:
    """Destroy and undefine a run's own domain, whatever state it is in; missing is fine (a
    transient domain is gone once destroyed)."""
    require_own(name)
    try:
        dom = conn.lookupByName(name)
        persistent = dom.isPersistent()
        _destroy(dom)
        if persistent:
            dom.undefine()
    except libvirt.libvirtError as error:
        if error.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise


def pull_by_hand(conn: libvirt.virConnect, key: DiskKey, bandwidth: int) -> None:
    """`virsh blockpull --bandwidth` on a run's own domain, as somebody else would."""
    require_own(key.domain)
    flags = libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
    conn.lookupByName(key.domain).blockPull(key.disk, bandwidth, flags)


# -- one run's lab -----------------------------------------------------------------------------


@dataclass
class Lab:
    """Domains and images of one test or benchmark; `close()` removes them all.

    Names are `prefix + label`, so a benchmark's policy can select all of them by one glob
    (`prefix*`) and a test's policy can name each exactly. `persistent` domains stay defined
    (shut off) after a stop; transient ones vanish with it.
    """

    conn: libvirt.virConnect
    prefix: str
    folder: Path
    persistent: bool = True
    names: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, conn: libvirt.virConnect, kind: str = "test", persistent: bool = True) -> Lab:
        prefix = unique_prefix(kind)
        return cls(conn, prefix, make_image_folder(prefix + "images"), persistent)

    def name(self, label: str) -> str:
        """The domain name for `label`, remembered for the clean-up before it exists."""
        name = self.prefix + label
        if name in self.names:
            raise ValueError(f"label {label!r} used twice in one lab")
        self.names.append(name)
        return name

    def start(self, label: str, disks: Sequence[DiskSpec]) -> libvirt.virDomain:
        """A new domain, started paused."""
        xml = domain_xml(self.name(label), disks)
        if not self.persistent:
            return self.conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
        dom = self.conn.defineXML(xml)
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        return dom

    def boot(self, label: str, disks: Sequence[DiskSpec]) -> libvirt.virDomain:
        """A new domain, running: its guest boots from the first disk."""
        dom = self.conn.defineXML(domain_xml(self.name(label), disks, boot_disk=True))
        dom.create()
        return dom

    def define(self, label: str, disks: Sequence[DiskSpec]) -> str:
        """A new persistent domain, defined and never started."""
        name = self.name(label)
        self.conn.defineXML(domain_xml(name, disks))
        return name

    def start_with_chains(
        self, label: str, fills_mib: Iterable[int], depth: int = 1, size_mib: int = 64
    ) -> dict[DiskKey, Chain]:
        """One paused domain with a disk per fill (vda, vdb, ...): a `size_mib` chain of
        `depth` overlays over a base holding that many MiB of data."""
        chains: dict[str, Chain] = {}
        for index, fill in enumerate(fills_mib):
            target = f"vd{chr(ord('a') + index)}"
            chains[target] = create_chain(
                self.folder, f"{label}-{target}", depth, size_mib=size_mib, fill_mib=fill
            )
        specs = [DiskSpec(target, chain.top) for target, chain in chains.items()]
        name = self.start(label, specs).name()
        return {DiskKey(name, target): chain for target, chain in chains.items()}

    def stop(self, name: str) -> None:
        stop_domain(self.conn, name)

    def remove_domains(self, wait: bool = False) -> None:
        """Removes every domain, on a fresh connection: the lab's own may have died with a
        libvirtd restart. `wait`: until their QEMUs are gone (a file system they used can go)."""
        if not self.names:
            return
        conn = open_conn()
        try:
            with ThreadPoolExecutor(max_workers=CLEANUP_WORKERS) as pool:
                list(pool.map(lambda name: remove_domain(conn, name), self.names))
            for name in self.names if wait else ():
                wait_shut_off(conn, name)
        finally:
            conn.close()

    def close(self) -> None:
        """Removes every domain and the folder."""
        try:
            self.remove_domains()
        finally:
            remove_image_folder(self.folder)
