"""What each way of reading a libvirt host costs, per domain and per disk.

    .venv/bin/python bench/observe_costs.py [--domains 50] [--rounds 5] [--record]

Starts N paused TCG domains (2 disks each, qcow2 overlays on one shared base) on
qemu:///system, times the candidate calls (median round), prints a Markdown report (with
`--record`, into bench/RESULTS.md) and removes every domain and image it made, also on failure
or Ctrl-C. exporter/hosts/libvirt/host.py chose its calls from these figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import table
from harness.libvirt_lab import Lab
from harness.libvirtd import URI

from exporter.hosts.libvirt.host import LibvirtHost

TARGETS = ("vda", "vdb")


def row(name: str, unit: str, items: int, rounds: int, work: Callable[[], object]) -> list[str]:
    """Wall and this process's CPU (the libvirt event-loop thread included), median round."""
    cost = common.measure(work, rounds, process=True)
    return [
        name,
        f"{items} {unit}{'s' if items != 1 else ''}",
        f"{cost.wall * 1000:.2f}",
        f"{cost.wall / items * 1000:.3f}",
        f"{cost.cpu / items * 1000:.3f}",
    ]


def run_bench(lab: Lab, rounds: int) -> list[list[str]]:
    import libvirt

    conn = lab.conn
    doms = [conn.lookupByName(n) for n in lab.names]
    n = len(doms)
    info_flag = libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    state = libvirt.VIR_DOMAIN_STATS_STATE
    block, backing = (
        libvirt.VIR_DOMAIN_STATS_BLOCK,
        libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING,
    )
    host = LibvirtHost(URI)
    try:
        host.observe()  # connect, and the whole job sweep, before timing
        return [
            row("listAllDomains(0)", "call", 1, rounds, lambda: conn.listAllDomains(0)),
            row(
                "getAllDomainStats(STATE)", "domain", n, rounds,
                lambda: conn.getAllDomainStats(state),
            ),
            row("virDomainGetState", "domain", n, rounds, lambda: [d.state() for d in doms]),
            row("XMLDesc(0)", "domain", n, rounds, lambda: [d.XMLDesc(0) for d in doms]),
            row(
                "blockJobInfo (no job)", "disk", n * len(TARGETS), rounds,
                lambda: [d.blockJobInfo(k, info_flag) for d in doms for k in TARGETS],
            ),
            row(
                "getAllDomainStats(BLOCK, BACKING)", "domain", n, rounds,
                lambda: conn.getAllDomainStats(block, backing),
            ),
            row("LibvirtHost.observe(), steady", "domain", n, rounds, host.observe),
        ]  # fmt: skip
    finally:
        host.close()


def report(rows: list[list[str]], domains: int, rounds: int, command: str) -> str:
    head = ["call", "items", "ms total", "ms/item", "client CPU ms/item"]
    return (
        common.header("observe() costs on real libvirt (bench/observe_costs.py)", command, True)
        + f"\n{domains} paused TCG domains, {len(TARGETS)} disks each (qcow2 overlays on one "
        f"base), no block job running; median of {rounds} rounds. 'ms/item' is wall time per "
        "domain or disk (the client waits on libvirtd and, for stats, on every QEMU); 'client "
        "CPU' is this process's CPU, the libvirt event-loop thread included. The steady "
        "observe() is one after the first: XML unchanged (not parsed again), no job known, and "
        "no part of the job sweep due.\n\n"
        + table(head, rows)
        + """
What observe() does, and why:

- Domains and states: one `getAllDomainStats(VIR_DOMAIN_STATS_STATE)` call. It costs about the
  same as `listAllDomains` and saves one `virDomainGetState` round trip per domain.
- Disks and chains: `XMLDesc(0)` per domain. libvirtd answers from memory, so it is cheap and
  it names network images, readonly/transient flags and `<mirror>` (copy jobs).
- Jobs: `blockJobInfo` only for disks with a `<mirror>` or a job this host started or saw, and
  a rolling sweep of the disks on a backing chain (a tenth per resync; all after connecting).
  Independent disks cost nothing.
- Not used: `getAllDomainStats(BLOCK, BACKING)`. It asks every QEMU (query-blockstats /
  query-named-block-nodes), costs several times the XML per domain, still reports no block job
  and gives no URL for a network backing image.
"""
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    with common.lab() as lab:
        setup = common.paused_domains(lab, args.domains, TARGETS)
        print(f"started {args.domains} domains in {setup:.1f} s", flush=True)
        rows = run_bench(lab, args.rounds)
    command = "python bench/observe_costs.py " + " ".join(sys.argv[1:])
    text = report(rows, args.domains, args.rounds, command.strip())
    print(text)
    if args.record:
        common.record("observe_costs", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
