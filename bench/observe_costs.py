"""What each way of reading a libvirt host costs, per domain and per disk.

    .venv/bin/python bench/observe_costs.py [--domains 50] [--rounds 5] [--out FILE.md]

Starts N paused TCG domains (2 disks each, tiny qcow2 overlays on one shared base) on
qemu:///system, times the candidate calls over several rounds (median round), writes a
Markdown report and removes every domain and image it made, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import libvirt

from exporter.libvirt_host import LibvirtHost

URI = "qemu:///system"
IMAGES = Path("/var/lib/libvirt/images")
DISKS = ("vda", "vdb")


@dataclass(frozen=True)
class Cost:
    name: str
    unit: str  # what one "item" is: call, domain, disk
    items: int
    wall: float  # seconds for all items, median round
    cpu: float  # this process's CPU seconds for all items, median round

    def row(self) -> str:
        per_wall = self.wall / self.items * 1000
        per_cpu = self.cpu / self.items * 1000
        return (
            f"| {self.name} | {self.items} {self.unit}{'s' if self.items != 1 else ''} | "
            f"{self.wall * 1000:.2f} | "
            f"{per_wall:.3f} | {per_cpu:.3f} |"
        )


def measure(name: str, unit: str, items: int, rounds: int, work: Callable[[], object]) -> Cost:
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Cost(name, unit, items, statistics.median(walls), statistics.median(cpus))


def make_domains(conn: libvirt.virConnect, folder: Path, count: int, tag: str) -> list[str]:
    base = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    names = []
    for index in range(count):
        name = f"bpx-bench-{tag}-{index:03d}"
        disks = ""
        for disk in DISKS:
            top = folder / f"{name}-{disk}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                 str(top)],
                check=True,
            )  # fmt: skip
            disks += (
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{top}'/><target dev='{disk}' bus='virtio'/></disk>"
            )
        xml = (
            f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{disks}</devices></domain>"
        )
        names.append(name)  # before createXML: a half-made domain is cleaned up too
        conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)
    return names


def remove_domains(conn: libvirt.virConnect, names: list[str]) -> None:
    def destroy(name: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # never started, or gone
            conn.lookupByName(name).destroy()  # transient: destroy also undefines

    # A destroy waits ~2 s for libvirtd's clean-up; in parallel the bench ends in seconds.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(destroy, names))


def run_bench(conn: libvirt.virConnect, names: list[str], rounds: int) -> list[Cost]:
    doms = [conn.lookupByName(n) for n in names]
    n = len(doms)
    info_flag = libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    block_stats = libvirt.VIR_DOMAIN_STATS_BLOCK
    backing = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
    host = LibvirtHost(URI)
    try:
        host.observe()  # connect before timing
        return [
            measure("listAllDomains(0)", "call", 1, rounds, lambda: conn.listAllDomains(0)),
            measure(
                "getAllDomainStats(STATE)",
                "domain",
                n,
                rounds,
                lambda: conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE),
            ),
            measure("virDomainGetState", "domain", n, rounds, lambda: [d.state() for d in doms]),
            measure("XMLDesc(0)", "domain", n, rounds, lambda: [d.XMLDesc(0) for d in doms]),
            measure(
                "blockJobInfo (no job)",
                "disk",
                n * len(DISKS),
                rounds,
                lambda: [d.blockJobInfo(k, info_flag) for d in doms for k in DISKS],
            ),
            measure(
                "getAllDomainStats(BLOCK, BACKING)",
                "domain",
                n,
                rounds,
                lambda: conn.getAllDomainStats(block_stats, backing),
            ),
            measure("LibvirtHost.observe()", "domain", n, rounds, host.observe),
        ]
    finally:
        host.close()


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    conn = libvirt.open(URI)
    try:
        lib = conn.getLibVersion()
        hv = conn.getVersion()
    finally:
        conn.close()

    def version(v: int) -> str:
        return f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

    return (
        f"{cpu}, {_cores()} cores, Linux {platform.release()}, libvirt {version(lib)}, "
        f"QEMU {version(hv)}, Python {platform.python_version()}"
    )


def _cores() -> int:
    return os.cpu_count() or 0


def report(costs: list[Cost], domains: int, rounds: int, command: str) -> str:
    rows = "\n".join(c.row() for c in costs)
    return f"""# observe() costs on real libvirt

Command: `{command}`

Machine: {machine()}

{domains} paused TCG domains, {len(DISKS)} disks each (qcow2 overlays on one base), no block
job running; median of {rounds} rounds. "ms/item" is wall time per domain or disk (the client
waits on libvirtd and, for stats, on every QEMU); "client CPU" is this process's CPU only, the
libvirt event-loop thread included (with an event loop registered it handles the replies).
`LibvirtHost.observe()` here reads the job of both disks of every domain (each has a chain).

| call | items | ms total | ms/item | client CPU ms/item |
|---|---|---|---|---|
{rows}

## What observe() does, and why

- Domains and states: one `getAllDomainStats(VIR_DOMAIN_STATS_STATE)` call. It costs about the
  same as `listAllDomains` and saves one `virDomainGetState` round trip per domain.
- Disks and chains: `XMLDesc(0)` per domain. libvirtd answers from memory, so it is cheap and
  it names network images, readonly/transient flags and `<mirror>` (copy jobs).
- Jobs: `blockJobInfo` only for disks of running/paused domains that have a backing chain, a
  `<mirror>` or a job this host started or saw. Independent disks cost nothing.
- Not used: `getAllDomainStats(BLOCK, BACKING)`. It asks every QEMU (query-blockstats /
  query-named-block-nodes), costs several times the XML per domain, still reports no block job
  and gives no URL for a network backing image.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("OBSERVE_COSTS.md"))
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    folder = IMAGES / f"bpx-bench-{tag}"
    folder.mkdir(mode=0o755)
    conn = libvirt.open(URI)
    names: list[str] = []
    try:
        started = time.perf_counter()
        names = make_domains(conn, folder, args.domains, tag)
        print(f"started {len(names)} domains in {time.perf_counter() - started:.1f} s", flush=True)
        costs = run_bench(conn, names, args.rounds)
    finally:
        remove_domains(conn, names)
        conn.close()
        shutil.rmtree(folder, ignore_errors=True)
    command = "python bench/observe_costs.py " + " ".join(sys.argv[1:])
    text = report(costs, args.domains, args.rounds, command.strip())
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
