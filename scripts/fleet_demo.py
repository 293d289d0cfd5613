"""The fleet demo (`scripts/demo --fleet [--for SECONDS]`): one storage group, four hosts.

A local etcd cluster (three members and etcd's gateway on free loopback ports) and four
daemons, each on its own simulated host (`sim://`, no libvirt) whose disks sit on templates in
/mnt/filer-a, sharing group `filer-a`: 48 MiB/s and 3 pulls at once for all of them. Every two
seconds it prints what each daemon holds and the sums, which never go above the group's
limits. Ctrl-C (or the end of --for) stops the daemons and etcd and removes their data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harness the fleet tests use
from harness.daemon_process import parse_metrics  # noqa: E402
from harness.etcd_cluster import etcd_cluster  # noqa: E402
from harness.fleet_lab import (  # noqa: E402
    GROUP,
    HELD_BANDWIDTH,
    HELD_PULLS,
    fleet_policy,
    sim_daemons,
)

from exporter.hosts.sim.records import MiB  # noqa: E402

HOSTS = 4
STATE = ROOT / "demo-state" / "fleet"
POLICY = fleet_policy(group_bandwidth="48MiB/s", group_max_concurrent=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--for", dest="seconds", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args()
    shutil.rmtree(STATE, ignore_errors=True)
    print(f"demo: starting 3 etcd members and {HOSTS} daemons under {STATE}", flush=True)
    labels = frozenset({("group", GROUP)})
    try:
        with (
            etcd_cluster(STATE / "etcd") as cluster,
            sim_daemons(
                STATE, HOSTS, cluster.gateway_url, POLICY, domains=3, disk_size=256 * MiB, ttl=10
            ) as daemons,
        ):
            print(f"demo: etcd gateway {cluster.gateway_url}; each daemon's /metrics:")
            for n, daemon in enumerate(daemons):
                print(f"demo:   host-{n}: curl -s http://{daemon.address}/metrics | grep shared")
            print("demo: group filer-a: 48 MiB/s and 3 pulls at once for all hosts together")
            began = time.monotonic()
            while args.seconds is None or time.monotonic() - began < args.seconds:
                pulls = bandwidth = 0.0
                cells = []
                for n, daemon in enumerate(daemons):
                    samples = parse_metrics(daemon.scrape())
                    held = samples.get((HELD_PULLS, labels), 0.0)
                    limit = samples.get((HELD_BANDWIDTH, labels), 0.0)
                    pulls, bandwidth = pulls + held, bandwidth + limit
                    cells.append(f"host-{n} {held:.0f} @ {limit / MiB:5.1f}")
                print(
                    f"{time.monotonic() - began:6.1f} s  "
                    + " | ".join(cells)
                    + f"  = {pulls:.0f} pulls, {bandwidth / MiB:.1f} MiB/s",
                    flush=True,
                )
                time.sleep(2)
    except KeyboardInterrupt:
        pass
    print("demo: stopped the daemons and etcd")
    shutil.rmtree(STATE, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
