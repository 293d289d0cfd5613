"""Flags shared by several subcommands, spelled the exporter way (`--libvirt.uri`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from exporter.hosts import DEFAULT_URI

DEFAULT_STATE_DIR = Path("/var/lib/blockpull-exporter")


def add_libvirt_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--libvirt.uri",
        dest="libvirt_uri",
        default=DEFAULT_URI,
        metavar="URI",
        help=f"libvirt connection URI, or sim:///path.json for the simulated host "
        f"(default: {DEFAULT_URI})",
    )


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
        help=f"where the retry and job memory is kept (default: {DEFAULT_STATE_DIR})",
    )


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
