"""The `shared` section: parsed into SharedGroup values, and a daemon that cannot honour it
refuses to start."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.policy.loader import parse_policy
from exporter.policy.values import SharedGroup

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "policies" / "good" / "shared.yaml"


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """`run` sets up the process's logging first thing (to stderr, which capsys swaps):
    put pytest's handlers back for the tests after this one."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_shared_groups_are_read_in_file_order_with_their_limits() -> None:
    policy = parse_policy(FIXTURE.read_text(), "shared.yaml")
    assert policy.shared == (
        SharedGroup("filer-a", ("/mnt/filer-a/*",), 800 * 1024**2, 8),
        SharedGroup(
            "san_templates.v2", ("/srv/san/templates/*", "/srv/san/overlays/*.qcow2"), None, 2
        ),
    )


def test_a_policy_without_shared_section_has_no_groups() -> None:
    assert parse_policy("version: 1\n", "p.yaml").shared == ()


def test_check_counts_the_shared_groups(capsys) -> None:
    assert main(["check", str(FIXTURE)]) == 0
    assert "2 shared groups" in capsys.readouterr().out


def test_run_refuses_shared_groups_without_a_coordination_url(tmp_path, capsys) -> None:
    uri = f"sim://{tmp_path}/host.json"
    code = main(["run", "--policy.file", str(FIXTURE), "--libvirt.uri", uri])
    assert code == 1
    err = capsys.readouterr().err
    assert "shared groups (filer-a, san_templates.v2) need a coordination service" in err
    assert "--coordination.url" in err
    assert not (tmp_path / "host.json").exists()  # refused before opening the host


def test_run_refuses_a_coordination_url_tooz_cannot_use(tmp_path, capsys) -> None:
    uri = f"sim://{tmp_path}/host.json"
    args = ["run", "--policy.file", str(FIXTURE), "--libvirt.uri", uri]
    assert main([*args, "--coordination.url", "nosuchbackend://x"]) == 1
    assert "--coordination.url: NoMatches" in capsys.readouterr().err
