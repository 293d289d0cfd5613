"""What scripts/build-deb's package holds and needs, read from the .deb with dpkg-deb."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def test_the_package_is_named_for_its_version_and_built_for_all_architectures(
    deb_file: Path,
) -> None:
    version = dpkg_deb("-f", str(deb_file), "Version").strip()
    assert deb_file.name == f"blockpull-exporter_{version}_all.deb"
    assert deb_file.parent.name == "dist"


def test_the_package_installs_program_unit_user_config_rules_and_dashboard(
    deb_file: Path,
) -> None:
    paths = {
        line.split()[-1].removeprefix(".") for line in dpkg_deb("-c", str(deb_file)).splitlines()
    }
    assert {
        "/usr/bin/blockpull-exporter",
        "/lib/systemd/system/blockpull-exporter.service",
        "/usr/lib/sysusers.d/blockpull-exporter.conf",
        "/usr/lib/tmpfiles.d/blockpull-exporter.conf",
        "/etc/default/blockpull-exporter",
        "/etc/blockpull-exporter/example.yaml",
        "/usr/share/blockpull-exporter/prometheus/alerts.yml",
        "/usr/share/blockpull-exporter/grafana/blockpull-exporter.json",
        "/usr/share/blockpull-exporter/policies/schema.json",
        "/usr/lib/python3/dist-packages/exporter/cli.py",
        "/usr/share/doc/blockpull-exporter/copyright",
    } <= paths


def test_the_configuration_files_are_conffiles(deb_file: Path) -> None:
    conffiles = dpkg_deb("-I", str(deb_file), "conffiles").split()
    assert sorted(conffiles) == [
        "/etc/blockpull-exporter/example.yaml",
        "/etc/default/blockpull-exporter",
    ]


def test_the_package_depends_on_debian_12_python_packages_at_the_pyproject_floors(
    deb_file: Path,
) -> None:
    depends = re.split(r",\s*", dpkg_deb("-f", str(deb_file), "Depends").strip())
    assert {
        "python3-prometheus-client (>= 0.16)",
        "python3-libvirt (>= 9.0)",
        "python3-yaml (>= 6.0)",
        "python3-bcrypt (>= 3.2.2)",
    } <= set(depends)
