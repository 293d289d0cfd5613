"""`blockpull-exporter check FILE...`: validate policy files, like `promtool check config`.

Prints `FILE: OK (...)` per valid file on stdout and every issue of an invalid file on stderr;
exits 0 when all files are valid, 1 otherwise (2 for usage errors, from argparse). Needs
neither libvirt nor a running daemon, so it fits Ansible's `validate: blockpull-exporter check
%s` and a systemd `ExecStartPre=`.
"""

from __future__ import annotations

import argparse
import sys

from exporter.policy.values import Policy

STDIN = "-"
STDIN_SOURCE = "<stdin>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=f"policy file to validate; {STDIN!r} reads standard input",
    )
    parser.epilog = (
        "Exit status: 0 if every file is valid, 1 if any is not (each problem is printed to "
        "stderr as FILE:LINE:COLUMN: YAML.PATH: message), 2 for usage errors."
    )


def main(args: argparse.Namespace) -> int:
    from exporter.policy.loader import PolicyError, load_policy, parse_policy

    status = 0
    for name in args.files:
        try:
            if name == STDIN:
                policy = parse_policy(_read_stdin(), STDIN_SOURCE)
            else:
                policy = load_policy(name)
        except PolicyError as error:
            print(error, file=sys.stderr)
            status = 1
            continue
        print(f"{policy.source}: OK ({summary(policy)})")
    return status


def _read_stdin() -> bytes:
    from exporter.config_file.reading import UnreadableFileError, read_config_stream
    from exporter.policy.loader import PolicyError

    try:
        return read_config_stream(sys.stdin.buffer)
    except UnreadableFileError as error:
        raise PolicyError.unpositioned(STDIN_SOURCE, str(error)) from None


def summary(policy: Policy) -> str:
    """`version 1, 3 windows, 4 rules, timezone Europe/Berlin` (`, 1 shared group` if any)."""
    timezone = policy.timezone or "host local"
    shared = f", {_count(len(policy.shared), 'shared group')}" if policy.shared else ""
    return (
        f"version {policy.version}, {_count(len(policy.windows), 'window')}, "
        f"{_count(len(policy.rules), 'rule')}, timezone {timezone}{shared}"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
