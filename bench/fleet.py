"""Fleet: daemons on simulated hosts drain one shared group through a real 3-member etcd.

    .venv/bin/python bench/fleet.py [--daemons 5,10,25,50] [--seconds 60] [--faults] [--record]

For each fleet size N: a fresh local etcd cluster (3 members and etcd's gateway, loopback
ports), N daemons (`blockpull-exporter run` processes) each on its own simulated host
(`sim://`) whose disks all sit on the group's template, and one policy: group `filer-a` with
bandwidth 400 MiB/s and max_concurrent 8, hosts unlimited. Once every daemon has answered and
the group is full, a window of `--seconds`:

- utilisation: the rate at which the simulated hosts really copied over the window (read from
  their state files, i.e. the hosts' ground truth, not the daemons' word; each host's bytes
  over its own interval, summed) / group bandwidth;
  target >= 0.9 at 50 daemons (DESIGN.md);
- coordination requests per second per daemon: the daemons' own
  blockpull_coordination_requests_total (HTTP requests to the etcd gateway) over the window;
- convergence: from the last daemon ready to the group full; and the longest time the sums of
  the daemons' held pulls and speed limits (their /metrics, sampled every 0.5 s) stayed above
  the group's limits.

With `--faults`, five daemons (lease TTL 30 s, the default) go through the failures of the
README's failure analysis, one after the other, timed from their /metrics sampled five times
a second: a daemon holding slots is SIGKILLed (until the survivors fill the group again); the
etcd leader is stopped (how long daemons report the service down, and whether a group pull
was stopped); every member is frozen with SIGSTOP (until the group pulls stop) and thawed
(until the group is full again).

Baseline: without coordination every host pulls at its own budget; N hosts at 50 MiB/s each
put N x 50 MiB/s on a filer meant to get 400 MiB/s (stated, not run).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import table
from harness.daemon_process import DaemonProcess, parse_metrics
from harness.etcd_cluster import etcd_cluster
from harness.fleet_lab import FleetSampler, Sweep, fleet_policy, longest_violation, sim_daemons

from exporter.core.clock import SystemClock
from exporter.fleet.agent import hold_margin
from exporter.hosts.sim.state_file import open_sim_host

MiB = common.MiB
GROUP_MAX = 8
GROUP_BANDWIDTH = 400 * MiB
DISK = 2048 * MiB  # a pull lasts ~40 s at one slot's share (50 MiB/s)
# A sim:// host only notices a pull's end when the daemon next reads it (real libvirt sends an
# event at once); reading progress every 0.5 s keeps that detour from counting as idle group.
DAEMON_ARGS = ("--progress.interval", "0.5")
READY_TIMEOUT = 180.0
REQUESTS = "blockpull_coordination_requests_total"
COMPLETED = "blockpull_jobs_completed_total"


@dataclass(frozen=True)
class Row:
    daemons: int
    disks_per_host: int
    converged: float  # seconds from the last daemon ready to the group full
    utilisation: float
    requests_per_daemon: float  # per second
    over_limits: float  # longest seconds the summed holdings exceeded the group's limits
    mean_pulls: float  # summed held pulls over the window's sweeps
    completed: int  # pulls that completed in the window: each one a slot handed on


def copied(daemons: list[DaemonProcess]) -> list[tuple[float, int]]:
    """Per host: (the host's time, bytes copied by then), from its state file caught up to
    now. Each host's own time, since reading 50 files takes a while."""
    clock = SystemClock()
    readings = []
    for daemon in daemons:
        host = open_sim_host(daemon.uri, clock)
        copied_bytes = host.bytes_copied_total()
        readings.append((host.now(), copied_bytes))
    return readings


def aggregate_rate(before: list[tuple[float, int]], after: list[tuple[float, int]]) -> float:
    """Bytes/s of all hosts together: the sum of each host's rate over its own interval."""
    return sum(
        (bytes1 - bytes0) / (time1 - time0)
        for (time0, bytes0), (time1, bytes1) in zip(before, after, strict=True)
    )


def counted(daemons: list[DaemonProcess]) -> tuple[float, float]:
    """(coordination requests, completed pulls) of all daemons so far."""
    requests = completed = 0.0
    for daemon in daemons:
        for (name, _), value in parse_metrics(daemon.scrape()).items():
            if name == REQUESTS:
                requests += value
            elif name == COMPLETED:
                completed += value
    return requests, completed


def wait(what: str, check: object, timeout: float) -> float:
    began = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - began > timeout:
            raise SystemExit(f"fleet bench: {what} not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def run(count: int, seconds: float, workdir: Path) -> Row:
    # Enough disks that no host runs dry before the window ends: the group copies
    # bandwidth x (warm-up + window) bytes.
    per_host = max(3, math.ceil(GROUP_BANDWIDTH * (seconds + 30) / DISK / count) + 1)
    policy = fleet_policy(group_bandwidth="400MiB/s", group_max_concurrent=GROUP_MAX)
    with (
        etcd_cluster(workdir / f"etcd-{count}") as cluster,
        sim_daemons(
            workdir / f"fleet-{count}",
            count,
            cluster.gateway_url,
            policy,
            domains=per_host,
            disk_size=DISK,
            ttl=30,
            log_level="warn",
            extra_args=DAEMON_ARGS,
        ) as daemons,
    ):
        probe = FleetSampler(daemons)
        converged = wait("the group full", lambda: probe.sweep().pulls == GROUP_MAX, READY_TIMEOUT)
        with FleetSampler(daemons, interval=0.5) as sampler:
            began = time.monotonic()
            bytes0, (requests0, completed0) = copied(daemons), counted(daemons)
            time.sleep(seconds)
            bytes1, (requests1, completed1) = copied(daemons), counted(daemons)
            window = time.monotonic() - began  # for requests: read at both ends in one go
        sweeps = sampler.since(began)
    return Row(
        count,
        per_host,
        converged,
        aggregate_rate(bytes0, bytes1) / GROUP_BANDWIDTH,
        (requests1 - requests0) / window / count,
        longest_violation(sweeps, GROUP_MAX, GROUP_BANDWIDTH),
        sum(s.pulls for s in sweeps) / len(sweeps),
        round(completed1 - completed0),
    )


FAULT_TTL = 30.0
FAULT_HOSTS = 5


def now_held(daemons: list[DaemonProcess]) -> Sweep:
    return FleetSampler(daemons).sweep()


def coordination_lost(daemons: list[DaemonProcess]) -> float:
    return sum(
        value
        for daemon in daemons
        for (name, labels), value in daemon.samples().items()
        if name == "blockpull_jobs_aborted_total" and ("reason", "coordination_lost") in labels
    )


def faults(workdir: Path) -> list[tuple[str, str]]:
    """(what happened, what was measured) for each failure, one after the other."""
    policy = fleet_policy(group_bandwidth="400MiB/s", group_max_concurrent=GROUP_MAX)
    figures: list[tuple[str, str]] = []
    with (
        etcd_cluster(workdir / "etcd-faults") as cluster,
        sim_daemons(
            workdir / "faults",
            FAULT_HOSTS,
            cluster.gateway_url,
            policy,
            domains=8,
            disk_size=4 * DISK,  # pulls outlast every fault
            ttl=FAULT_TTL,
            log_level="warn",
            extra_args=DAEMON_ARGS,
        ) as daemons,
    ):
        wait("the group full", lambda: now_held(daemons).pulls == GROUP_MAX, READY_TIMEOUT)
        victim = next(d for d in daemons if now_held([d]).pulls >= 1)
        others = [d for d in daemons if d is not victim]
        victim.kill()
        handover = wait("handover", lambda: now_held(others).pulls == GROUP_MAX, 3 * FAULT_TTL)
        figures.append(("SIGKILL of a daemon holding slots: the others hold all slots", handover))
        with FleetSampler(others) as sampler:
            began = time.monotonic()
            cluster.stop(cluster.leader())
            time.sleep(10)
        sweeps = sampler.since(began)
        down = sum(s.finished - s.started + 0.2 for s in sweeps if s.up < len(others))
        figures.append(("etcd leader stopped: time daemons reported the service down", down))
        figures.append(("... group pulls stopped meanwhile", coordination_lost(others)))
        figures.append(
            ("... mean held pulls over 10 s", sum(s.pulls for s in sweeps) / len(sweeps))
        )
        cluster.freeze()
        try:
            stopped = wait("pulls stop", lambda: now_held(others).pulls == 0, 2 * FAULT_TTL)
        finally:
            cluster.thaw()
        figures.append(("every member frozen (SIGSTOP): group pulls stopped", stopped))
        resumed = wait("resume", lambda: now_held(others).pulls == GROUP_MAX, 3 * FAULT_TTL)
        figures.append(("members thawed (SIGCONT): the group full again", resumed))
    return [(what, f"{value:.1f}") for what, value in figures]


def report(rows: list[Row], seconds: float, command: str) -> str:
    text = common.header("Fleet (bench/fleet.py)", command)
    text += (
        f"\nOne group, bandwidth {GROUP_BANDWIDTH // MiB} MiB/s, max_concurrent {GROUP_MAX}; "
        f"each simulated host has its disks ({DISK // MiB} MiB each) on the group's "
        f"template; lease TTL 30 s; measured over {seconds:.0f} s once the group was full.\n\n"
    )
    text += table(
        [
            "daemons",
            "disks/host",
            "to full group s",
            "utilisation",
            ">= 0.9",
            "coordination req/s per daemon",
            "longest over limits s",
            "mean held pulls",
            "pulls completed in the window",
        ],
        [
            (
                r.daemons,
                r.disks_per_host,
                f"{r.converged:.1f}",
                f"{r.utilisation:.3f}",
                "yes" if r.utilisation >= 0.9 else "NO",
                f"{r.requests_per_daemon:.2f}",
                f"{r.over_limits:.1f}",
                f"{r.mean_pulls:.2f}",
                r.completed,
            )
            for r in rows
        ],
    )
    return text + f"\nLoad average at the end: {common.load_average()}.\n"


def faults_report(failures: list[tuple[str, str]], command: str) -> str:
    text = common.header("Fleet failures (bench/fleet.py --faults)", command)
    text += (
        f"\n{FAULT_HOSTS} daemons on simulated hosts, one group ({GROUP_MAX} slots), lease TTL "
        f"{FAULT_TTL:.0f} s: a heartbeat every {FAULT_TTL / 6:.0f} s, group pulls stop "
        f"{hold_margin(FAULT_TTL):.0f} s before the lease can end; the failures one after "
        "the other.\n\n"
    )
    text += table(["what", "seconds (or count)"], failures)
    return text + f"\nLoad average at the end: {common.load_average()}.\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--daemons", default="5,10,25,50", help="fleet sizes, comma-separated ('' for none)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per size")
    parser.add_argument("--faults", action="store_true", help="also time the failures")
    parser.add_argument("--record", action="store_true", help="write bench/RESULTS.md")
    args = parser.parse_args()
    command = " ".join(["python bench/fleet.py", *sys.argv[1:]])
    sizes = [int(n) for n in args.daemons.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="blockpull-fleet-") as folder:
        rows = []
        for count in sizes:
            rows.append(run(count, args.seconds, Path(folder)))
            print(rows[-1], flush=True)
        if rows:
            text = report(rows, args.seconds, command)
            print(text, flush=True)
            if args.record:
                common.record("fleet", text)
        if args.faults:
            text = faults_report(faults(Path(folder)), command)
            print(text, flush=True)
            if args.record:
                common.record("fleet_faults", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
