"""`blockpull-exporter release (DOMAIN-GLOB...|--all)`: end holds before their time.

A hold is released when one of the given globs matches its own glob (`release 'web-*'` ends
the holds on `web-*` and on `web-3`; `release web-3` does not end a hold on `web-*`, and says
so). The daemon resumes its pulls there within a second.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

from exporter.commands import options as cli_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_options.add_state_dir(parser)
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--all", action="store_true", help="release every hold")
    chosen.add_argument(
        "domains", nargs="*", default=[], metavar="DOMAIN-GLOB", help="the holds to release"
    )


def main(args: argparse.Namespace) -> int:
    from exporter.commands.holds import describe_hold, refuse_bad_text
    from exporter.core.clock import SystemClock
    from exporter.core.holds import Hold
    from exporter.daemon.hold_store import HoldFileError, HoldStore

    problem = refuse_bad_text(args.domains, "")
    if problem:
        print(f"blockpull-exporter release: {problem}", file=sys.stderr)
        return 2
    now = SystemClock().time()

    def released(hold: Hold) -> bool:
        return args.all or any(fnmatch.fnmatchcase(hold.domains, g) for g in args.domains)

    ended: list[Hold] = []
    kept: list[Hold] = []

    def change(current: tuple[Hold, ...]) -> tuple[Hold, ...]:
        ended[:], kept[:] = (
            [h for h in current if released(h)],
            [h for h in current if not released(h)],
        )
        return tuple(kept)

    try:
        HoldStore(args.state_dir).update(change, now)
    except HoldFileError as error:
        print(f"blockpull-exporter release: {error}", file=sys.stderr)
        return 1
    for hold in ended:
        print(f"released {describe_hold(hold, now)}")
    for glob in args.domains:
        if not any(fnmatch.fnmatchcase(h.domains, glob) for h in ended):
            print(f"blockpull-exporter release: no hold matches {glob!r}", file=sys.stderr)
        for hold in kept:
            if hold.matches(glob):
                print(f"still held: {glob} by {describe_hold(hold, now)}", file=sys.stderr)
    if not ended and args.all:
        print("no hold was in force")
    return 0
