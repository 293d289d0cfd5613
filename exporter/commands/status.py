"""`blockpull-exporter status`: running pulls with progress, rate and ETA, and the backlog.

Reads the host directly (two job reads a second apart give the rate) and shows the holds in
force (--state.dir); with --policy.file the backlog is broken down by what the policy would do
with each disk, judged as `plan` does, with the daemon's saved state, and the free space of the
file systems the pulls write to.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TextIO

from exporter.commands import options as cli_options
from exporter.core.decisions import DiskDecision, DiskState
from exporter.core.job_rate import CursorSample, rate_between
from exporter.core.model import BlockJob, DiskKey, Observation

BAR_WIDTH = 24
CLEAR_SCREEN = "\033[H\033[2J"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_options.add_libvirt_uri(parser)
    cli_options.add_policy_file(parser, required=False)
    cli_options.add_state_dir(parser)
    parser.add_argument("--watch", action="store_true", help="redraw until interrupted")
    parser.add_argument(
        "--interval",
        type=cli_options.seconds_between(0.1, 3600),
        default=2.0,
        metavar="SECONDS",
        help="seconds between redraws with --watch, 0.1 to 3600 (default: 2)",
    )


def main(args: argparse.Namespace) -> int:
    from exporter.commands.holds import holds_lines
    from exporter.commands.plan import space_lines
    from exporter.commands.saved_state_plan import plan_with_saved_state
    from exporter.core.clock import SystemClock, sleep
    from exporter.core.model import HostError
    from exporter.daemon.hold_store import HoldStore
    from exporter.hosts import open_host
    from exporter.policy.loader import PolicyError, load_policy

    try:
        policy = load_policy(args.policy_file) if args.policy_file else None
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1
    clock = SystemClock()
    host = open_host(args.libvirt_uri, clock)
    previous: dict[DiskKey, CursorSample] | None = None
    try:
        while True:
            observation = host.observe()
            samples = _samples(observation, clock.monotonic())
            if previous is None:  # a rate needs two reads
                previous = samples
                sleep(clock, 1.0)
                observation = host.observe()
                samples = _samples(observation, clock.monotonic())
            rates = _rates(previous, samples)
            previous = samples
            if policy is not None:
                planned, holds = plan_with_saved_state(
                    host, observation, policy, clock, args.state_dir
                )
                decisions: Sequence[DiskDecision] | None = planned.decisions
                guards = [*holds_lines(holds, clock.time()), *space_lines(planned.space)]
            else:
                decisions = None
                guards = holds_lines(HoldStore(args.state_dir).read(), clock.time())
            frame = render_status(observation, rates, decisions, guards)
            if not args.watch:
                print(frame)
                return 0
            redraw(frame, sys.stdout)
            sleep(clock, args.interval)
    except HostError as error:
        print(f"blockpull-exporter: cannot read {args.libvirt_uri}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        host.close()


def redraw(frame: str, out: TextIO) -> None:
    """One --watch frame: over the last one on a terminal, after it (no escape codes) elsewhere."""
    out.write((CLEAR_SCREEN if out.isatty() else "\n") + frame + "\n")
    out.flush()


def _jobs(observation: Observation) -> dict[DiskKey, BlockJob]:
    return {key: disk.job for key, (_, disk) in observation.disks().items() if disk.job}


def _samples(observation: Observation, at: float) -> dict[DiskKey, CursorSample]:
    return {key: CursorSample(job.cur, at) for key, job in _jobs(observation).items()}


def _rates(
    before: Mapping[DiskKey, CursorSample], after: Mapping[DiskKey, CursorSample]
) -> dict[DiskKey, float]:
    rates: dict[DiskKey, float] = {}
    for key, sample in after.items():
        rate = rate_between(before[key], sample) if key in before else None
        if rate is not None:
            rates[key] = rate
    return rates


def progress_bar(cur: int, end: int) -> str:
    fraction = cur / end if end > 0 else 0.0
    filled = round(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction:4.0%}"


def eta(job: BlockJob, rate: float | None) -> str:
    from exporter.policy.units import format_duration

    if job.end == 0 or job.cur >= job.end:
        return "-"
    if not rate:
        return "?"
    return format_duration(round((job.end - job.cur) / rate))


def render_status(
    observation: Observation,
    rates: Mapping[DiskKey, float],
    decisions: Sequence[DiskDecision] | None,
    guards: Sequence[str] = (),
) -> str:
    """`guards`: lines on holds and free space, shown after the backlog."""
    from exporter.commands.table import render_table
    from exporter.policy.units import format_bytes_rate

    jobs = sorted(_jobs(observation).items())
    rows = [
        (
            str(key),
            str(job.type),
            progress_bar(job.cur, job.end),
            format_bytes_rate(int(rates[key])) if key in rates else "?",
            eta(job, rates.get(key)),
            format_bytes_rate(job.bandwidth),
        )
        for key, job in jobs
    ]
    lines = [f"{len(jobs)} block job(s) running"]
    if rows:
        lines += ["", render_table(("DISK", "JOB", "PROGRESS", "RATE", "ETA", "LIMIT"), rows)]
    lines += ["", backlog_line(observation, decisions), *guards]
    return "\n".join(lines)


def backlog_line(observation: Observation, decisions: Sequence[DiskDecision] | None) -> str:
    if decisions is None:
        waiting = sum(1 for _, disk in observation.disks().values() if disk.chain)
        return f"backlog: {waiting} disk(s) still depend on a backing image"
    done = {DiskState.INDEPENDENT, DiskState.IGNORED}
    running = _jobs(observation).keys()
    states = Counter(
        # A plan "starts" pulls it would start now; status reports what the host does.
        DiskState.PENDING if d.state is DiskState.PULLING and d.key not in running else d.state
        for d in decisions
        if d.rule is not None and d.state not in done
    )
    detail = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return f"backlog: {sum(states.values())} disk(s) to pull" + (f" ({detail})" if detail else "")
