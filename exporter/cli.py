"""Command line: `blockpull-exporter {run,check,plan,status,hold,release,holds}`.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`,
imported only when that subcommand is chosen: `check` (Ansible's `validate:`, systemd's
`ExecStartPre=`) never depends on libvirt, the web server or anything else being importable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from exporter import __version__

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("exporter.commands.run", "run the daemon: reconcile the host toward the policy"),
    "check": ("exporter.commands.check", "validate policy files, like `promtool check config`"),
    "plan": (
        "exporter.commands.plan",
        "show what the daemon would do now and why; acts on nothing",
    ),
    "status": ("exporter.commands.status", "show running pulls with progress, rate, ETA, backlog"),
    "hold": (
        "exporter.commands.hold",
        "keep the daemon's pulls off some domains for a while (abort, start none)",
    ),
    "release": ("exporter.commands.release", "end holds before their time"),
    "holds": ("exporter.commands.holds", "list the holds in force"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a bad flag value said in one line (it names the flag) and exit 2; the
    usage is for --help, not for an error message in a journal."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The full parser for the `chosen` subcommand; the others only by name and help."""
    parser = _Parser(
        prog="blockpull-exporter",
        description="Drive libvirt block pulls from a declarative policy; export Prometheus "
        "metrics.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in arguments if not a.startswith("-")), None)
    args = build_parser(chosen).parse_args(arguments)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return int(module.main(args))


if __name__ == "__main__":
    sys.exit(main())
