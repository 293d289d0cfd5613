"""`blockpull-exporter plan`: what the daemon would do now and why, per disk. Acts on nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exporter.commands import options as cli_options
from exporter.core.decisions import AbortPull, Action, Plan, SetSpeed, StartPull
from exporter.core.holds import NO_HOLDS, HoldSet
from exporter.core.space import SpaceCheck
from exporter.policy.values import Budget


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_options.add_policy_file(parser)
    cli_options.add_libvirt_uri(parser)
    cli_options.add_state_dir(parser)


def main(args: argparse.Namespace) -> int:
    from exporter.commands.saved_state_plan import plan_with_saved_state
    from exporter.core.clock import SystemClock
    from exporter.core.model import HostError
    from exporter.hosts import open_host
    from exporter.policy.loader import PolicyError, load_policy

    try:
        policy = load_policy(args.policy_file)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1
    clock = SystemClock()
    host = open_host(args.libvirt_uri, clock)
    try:
        observation = host.observe()
        result, holds = plan_with_saved_state(host, observation, policy, clock, args.state_dir)
    except HostError as error:
        print(f"blockpull-exporter: cannot read {args.libvirt_uri}: {error}", file=sys.stderr)
        return 1
    finally:
        host.close()
    print(describe(result, str(args.policy_file), holds, clock.time()))
    return 0


def describe_budget(budget: Budget) -> str:
    from exporter.policy.units import format_bytes_rate

    return f"{format_bytes_rate(budget.bandwidth)}, {budget.max_concurrent} at once"


def space_lines(checks: Sequence[SpaceCheck]) -> list[str]:
    """Each file system the min_free guard watches: free, the floor, what pulls may still take."""
    from exporter.policy.units import format_size

    return [
        f"file system {c.mountpoint}: {format_size(c.free)} free of {format_size(c.size)}, "
        f"min_free keeps {format_size(c.floor)}, running pulls may write "
        f"{format_size(c.reserved)} more"
        for c in checks
    ]


def describe_action(action: Action) -> str:
    from exporter.policy.units import format_bytes_rate

    if isinstance(action, AbortPull):
        return f"abort {action.key}: {action.reason}"
    speed = format_bytes_rate(action.bandwidth)
    if isinstance(action, SetSpeed):
        return f"set speed of {action.key} to {speed}: {action.reason}"
    assert isinstance(action, StartPull)
    return f"start pull of {action.key} at {speed}: {action.reason}"


def describe(result: Plan, source: str, holds: HoldSet = NO_HOLDS, now: float = 0.0) -> str:
    from exporter.commands.holds import holds_lines
    from exporter.commands.table import render_table

    windows = ", ".join(sorted(result.open_windows)) or "none"
    lines = [
        f"policy {source}; open windows: {windows}; budget: {describe_budget(result.budget)}",
        *holds_lines(holds, now),
        *space_lines(result.space),
        "",
        render_table(
            ("DOMAIN", "DISK", "RULE", "STATE", "REASON"),
            [
                (d.key.domain, d.key.disk, d.rule or "-", str(d.state), d.reason)
                for d in result.decisions
            ],
        ),
        "",
    ]
    if result.actions:
        lines.append(f"would do ({len(result.actions)}):")
        lines.extend(f"  {describe_action(a)}" for a in result.actions)
    else:
        lines.append("would do nothing")
    if result.next_wake is not None:
        lines.append(f"next timed change: {result.next_wake.isoformat(timespec='seconds')}")
    return "\n".join(lines)
