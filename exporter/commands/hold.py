"""`blockpull-exporter hold [--for DURATION] [--reason TEXT] DOMAIN-GLOB...`: hands off.

The running daemon aborts its own pulls on matching domains within a second (reason `held`)
and starts none there until `release` or the end of the hold (`--for`, default 1h, at most
7d: no hold lasts for ever; hold again to renew). Holding a glob that is already held renews
it. Works when root runs it while the daemon runs as its own user (see
`exporter.daemon.hold_store`), and holds survive daemon restarts.
"""

from __future__ import annotations

import argparse
import sys

from exporter.commands import options as cli_options

DEFAULT_SECONDS = 3600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exporter.daemon.hold_store import MAX_HOLD_SECONDS
    from exporter.policy.units import format_duration

    cli_options.add_state_dir(parser)
    parser.add_argument(
        "--for",
        dest="duration",
        type=cli_options.duration_between(1.0, MAX_HOLD_SECONDS),
        default=DEFAULT_SECONDS,
        metavar="DURATION",
        help=f"how long the hold lasts, like 30m or 2h, at most {format_duration(MAX_HOLD_SECONDS)}"
        f" (default: {format_duration(DEFAULT_SECONDS)})",
    )
    parser.add_argument(
        "--reason", default="", metavar="TEXT", help="why, shown by status, plan and holds"
    )
    parser.add_argument(
        "domains", nargs="+", metavar="DOMAIN-GLOB", help="domain names or globs, like 'web-*'"
    )


def main(args: argparse.Namespace) -> int:
    from exporter.commands.holds import describe_hold, invoking_user, refuse_bad_text
    from exporter.core.clock import SystemClock
    from exporter.core.holds import Hold
    from exporter.daemon.hold_store import HoldFileError, HoldStore

    problem = refuse_bad_text(args.domains, args.reason)
    if problem:
        print(f"blockpull-exporter hold: {problem}", file=sys.stderr)
        return 2
    now = SystemClock().time()
    by = invoking_user()
    placed = tuple(Hold(g, now, now + args.duration, args.reason, by) for g in args.domains)
    globs = {hold.domains for hold in placed}
    store = HoldStore(args.state_dir)
    try:
        store.update(lambda kept: (*(h for h in kept if h.domains not in globs), *placed), now)
    except HoldFileError as error:
        print(f"blockpull-exporter hold: {error}", file=sys.stderr)
        return 1
    for hold in placed:
        print(f"held {describe_hold(hold, now)}")
    return 0
