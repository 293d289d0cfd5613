"""debian/: the package's version and the unit files it installs."""

from __future__ import annotations

import re
from pathlib import Path

import exporter

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"


def test_the_changelog_names_the_package_version() -> None:
    # scripts/build-deb refuses to build when they differ; this says so before a build.
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"blockpull-exporter \(([^)]+)\) ", first)
    assert match, first
    assert match.group(1) == exporter.__version__


def test_the_package_installs_the_systemd_files_of_the_tree() -> None:
    links = {
        "blockpull-exporter.service": "systemd/blockpull-exporter.service",
        "blockpull-exporter.default": "systemd/blockpull-exporter.default",
        "blockpull-exporter.sysusers": "systemd/sysusers.d/blockpull-exporter.conf",
        "blockpull-exporter.tmpfiles": "systemd/tmpfiles.d/blockpull-exporter.conf",
    }
    for name, target in links.items():
        assert (DEBIAN / name).resolve() == ROOT / target, name
