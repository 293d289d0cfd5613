"""Flags shared by several subcommands, spelled the exporter way (`--libvirt.uri`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from exporter.commands import log_format
from exporter.hosts import DEFAULT_URI

DEFAULT_STATE_DIR = Path("/var/lib/blockpull-exporter")


def add_libvirt_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--libvirt.uri",
        dest="libvirt_uri",
        default=DEFAULT_URI,
        type=_libvirt_uri,
        metavar="URI",
        help=f"libvirt connection URI, or sim:///path.json for the simulated host "
        f"(default: {DEFAULT_URI})",
    )


def _libvirt_uri(text: str) -> str:
    from exporter.hosts.sim.state_file import is_sim_uri, sim_path

    if is_sim_uri(text):
        try:
            sim_path(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_policy_file(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--policy.file",
        dest="policy_file",
        type=Path,
        required=required,
        metavar="FILE",
        help="the YAML policy file",
    )


def add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state.dir",
        dest="state_dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"the daemon's state directory: retry and job memory, holds "
        f"(default: {DEFAULT_STATE_DIR})",
    )


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=list(log_format.LEVELS),
        metavar="LEVEL",
        help="log verbosity: debug, info, warn or error (default: info)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=log_format.FORMATS,
        help="one line per record, logfmt or json (default: logfmt)",
    )


def setup_logging(args: argparse.Namespace) -> None:
    log_format.setup_logging(args.log_level, args.log_format)


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of seconds in [low, high] (a zero interval is a busy loop)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give seconds from {low:g} to {high:g}"
            )
        return value

    return parse


def duration_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a duration written like the policy's (`90s`, `1h30m`) in [low, high]."""
    from exporter.policy.units import format_duration, parse_duration

    def parse(text: str) -> float:
        try:
            value = parse_duration(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: give {format_duration(low)} to {format_duration(high)}"
            )
        return value

    return parse
