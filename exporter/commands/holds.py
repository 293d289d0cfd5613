"""`blockpull-exporter holds`: the holds in force, and how they read in other commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from exporter.commands import options as cli_options
from exporter.core.holds import Hold, HoldSet
from exporter.policy.units import format_timestamp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_options.add_state_dir(parser)


def main(args: argparse.Namespace) -> int:
    from exporter.core.clock import SystemClock
    from exporter.daemon.hold_store import HoldStore

    holds = HoldStore(args.state_dir).read()
    print("\n".join(holds_lines(holds, SystemClock().time())))
    return 1 if holds.error else 0


def holds_lines(holds: HoldSet, now: float) -> list[str]:
    """A table of the holds in force (or what is wrong with the file), for every command."""
    from exporter.commands.table import render_table

    if holds.error:
        return [f"every domain is held: the holds file is unreadable: {holds.error}"]
    in_force = sorted(holds.in_force(now), key=lambda h: (h.until, h.domains))
    if not in_force:
        return ["no holds"]
    rows = [
        (h.domains, format_timestamp(h.until), _left(h.until - now), h.by, h.reason or "-")
        for h in in_force
    ]
    header = f"{len(in_force)} hold(s) in force:"
    return [header, render_table(("DOMAINS", "UNTIL", "LEFT", "BY", "REASON"), rows)]


def describe_hold(hold: Hold, now: float) -> str:
    why = f": {hold.reason}" if hold.reason else ""
    return (
        f"{hold.domains} until {format_timestamp(hold.until)} ({_left(hold.until - now)} left){why}"
    )


def invoking_user() -> str:
    """Who runs the command: the sudo user behind root when there is one."""
    import os
    import pwd

    from exporter.daemon.hold_store import check_text

    sudo_user = os.environ.get("SUDO_USER", "") if os.geteuid() == 0 else ""
    if sudo_user and check_text(sudo_user, "SUDO_USER") is None:
        return sudo_user
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def refuse_bad_text(globs: Sequence[str], reason: str) -> str | None:
    from exporter.daemon.hold_store import check_text

    for glob in globs:
        if not glob:
            return "an empty DOMAIN-GLOB matches no domain"
        problem = check_text(glob, f"DOMAIN-GLOB {glob!r}")
        if problem:
            return problem
    return check_text(reason, "--reason")


def _left(seconds: float) -> str:
    from exporter.policy.units import format_duration

    return format_duration(max(0, round(seconds)))
