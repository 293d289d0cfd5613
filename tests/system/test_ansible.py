"""The Ansible role in contrib/ansible, run by ansible-core (`-c local`) inside one Debian 12
container that has the package's .deb but not the package: the role installs it, writes the
policy only once `blockpull-exporter check` accepts it, and reloads the service when it changed.

ansible-core comes from a wheelhouse on the host (wheelhouse.py) into a venv in the container;
python3-venv, and the python3-apt that Ansible's apt module installs, from the root's apt cache.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import debian_root
import pytest
import yaml
from conftest import GOOD_POLICY, REPO, build_deb, require_system_environment
from nspawn import Container
from service import MIB, POLICY, Service
from wheelhouse import ANSIBLE_CORE, ensure_wheelhouse

WORKDIR = "/root/ansible"  # the role, the playbook, the .deb and the wheelhouse
VENV = "/opt/ansible"
PLAYBOOK = """\
- name: blockpull-exporter on this host
  hosts: localhost
  gather_facts: false
  roles:
    - role: blockpull_exporter
"""
RECAP = re.compile(r"^localhost\s*:\s*(.*)$", re.MULTILINE)
RELOAD_HANDLER = "RUNNING HANDLER [blockpull_exporter : Reload blockpull-exporter]"
RELOADED_AT = "blockpull_policy_last_reload_success_timestamp_seconds"


@dataclass(frozen=True)
class PlayResult:
    returncode: int
    output: str
    recap: dict[str, int]


@dataclass
class Host:
    service: Service
    deb: str  # the .deb's path inside the container

    def play(self, policy: dict[str, Any]) -> PlayResult:
        """Run the role with this policy; JSON is YAML, so the variables file is JSON."""
        variables = {"blockpull_exporter_package": self.deb, "blockpull_exporter_policy": policy}
        self.service.container.write(f"{WORKDIR}/vars.json", json.dumps(variables))
        result = self.service.container.run(
            f"cd {WORKDIR}\n"
            f"HOME=/root ANSIBLE_ROLES_PATH={WORKDIR}/roles ANSIBLE_NOCOLOR=1 "
            f"{VENV}/bin/ansible-playbook -c local -i localhost, -e @vars.json playbook.yml",
            check=False,
            timeout=300,
        )
        output = result.stdout + result.stderr
        found = RECAP.search(result.stdout)
        assert found, f"no PLAY RECAP in:\n{output}"
        recap = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", found.group(1))}
        return PlayResult(result.returncode, output, recap)


def policy_with(**defaults: object) -> dict[str, Any]:
    policy = yaml.safe_load(GOOD_POLICY)
    policy["defaults"].update(defaults)
    return policy


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """A booted container with the .deb, the role and ansible-core, before any play."""
    require_system_environment()
    folder = Path(tempfile.mkdtemp(prefix="bpx-ansible-"))
    container: Container | None = None
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            deb = pool.submit(build_deb)
            wheels = pool.submit(ensure_wheelhouse)
            root = debian_root.ensure_root(folder / "mmdebstrap.log")
            name = f"bpx-ansible-{secrets.token_hex(3)}"
            container = Container(root, name, folder / f"{name}.console")
            container.boot()
            shutil.copytree(REPO / "contrib" / "ansible", container.path(WORKDIR))
            shutil.copytree(wheels.result(), container.path(f"{WORKDIR}/wheels"))
            shutil.copy(deb.result(), container.path(WORKDIR))
        container.write(f"{WORKDIR}/playbook.yml", PLAYBOOK)
        container.run(
            "apt-get install -y -q python3-venv >/dev/null\n"
            f"python3 -m venv {VENV}\n"
            f"{VENV}/bin/pip install -q --no-index --find-links {WORKDIR}/wheels"
            f" ansible-core=={ANSIBLE_CORE}",
            timeout=300,
        )
        yield Host(Service(container, "package"), f"{WORKDIR}/{deb.result().name}")
    finally:
        if container is not None:
            container.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def first_play(host: Host) -> PlayResult:
    return host.play(policy_with())


@pytest.fixture
def applied(host: Host, first_play: PlayResult) -> Host:
    """The host with the good policy applied by the role (a play that may change nothing)."""
    assert host.play(policy_with()).recap["failed"] == 0
    return host


def test_the_first_play_installs_the_package_writes_the_policy_and_starts_the_service(
    host: Host, first_play: PlayResult
) -> None:
    assert (first_play.returncode, first_play.recap["failed"]) == (0, 0), first_play.output
    run = host.service.container.run
    assert run("dpkg-query -W -f '${Status}' blockpull-exporter").stdout == ("install ok installed")
    assert run(f"stat -c '%U %G %a' {POLICY}").stdout.split() == [
        "root",
        "blockpull-exporter",
        "640",
    ]
    assert yaml.safe_load(host.service.policy()) == policy_with()
    assert host.service.show("ActiveState") == "active"
    assert host.service.show("UnitFileState") == "enabled"
    assert host.service.metric("blockpull_budget_bandwidth_bytes_per_second") == 4 * MIB


def test_a_changed_policy_is_written_and_the_handler_reloads_the_service(applied: Host) -> None:
    service = applied.service
    pid = service.main_pid()
    reloaded_at = service.metric(RELOADED_AT)

    played = applied.play(policy_with(bandwidth="6MiB/s"))

    assert (played.returncode, played.recap["failed"]) == (0, 0), played.output
    assert played.recap["changed"] >= 1
    assert RELOAD_HANDLER in played.output
    assert yaml.safe_load(service.policy()) == policy_with(bandwidth="6MiB/s")
    service.wait_metric(
        "blockpull_budget_bandwidth_bytes_per_second", lambda v: v == 6 * MIB, timeout=5
    )
    assert reloaded_at is not None
    assert (service.metric(RELOADED_AT) or 0) > reloaded_at
    assert service.metric("blockpull_policy_last_reload_successful") == 1
    assert service.main_pid() == pid


def test_a_second_play_with_the_same_policy_changes_nothing(applied: Host) -> None:
    reloaded_at = applied.service.metric(RELOADED_AT)

    played = applied.play(policy_with())

    assert (played.returncode, played.recap["changed"], played.recap["failed"]) == (0, 0, 0)
    assert RELOAD_HANDLER not in played.output
    assert applied.service.metric(RELOADED_AT) == reloaded_at


def test_a_broken_policy_fails_the_play_and_leaves_the_file_and_the_daemon_alone(
    applied: Host,
) -> None:
    service = applied.service
    before = service.policy()
    pid = service.main_pid()
    reloaded_at = service.metric(RELOADED_AT)

    played = applied.play(policy_with(max_concurrent=-1))

    assert played.returncode != 0
    assert played.recap["failed"] == 1
    failed_task = played.output.split("fatal: [localhost]")[0].rsplit("TASK [", 1)[-1]
    assert failed_task.startswith("blockpull_exporter : Write the policy")
    assert "defaults.max_concurrent: must be at least 1, got -1" in played.output
    assert RELOAD_HANDLER not in played.output
    assert service.policy() == before
    assert (service.show("ActiveState"), service.main_pid()) == ("active", pid)
    assert service.metric("blockpull_policy_last_reload_successful") == 1
    assert service.metric(RELOADED_AT) == reloaded_at
