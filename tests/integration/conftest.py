"""Fixtures for tests against a real libvirtd + QEMU (qemu:///system; see scripts/setup).

Every test in tests/integration is marked `integration`. A test that needs libvirt asks for
`libvirt_conn` (directly or through `image_folder`/`domains`/`libvirt_host`): when libvirtd does
not answer it is skipped, unless the environment variable CI is set, where it fails instead.
Everything created here (domains, image folders, hosts) is removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import helpers
import libvirt
import pytest

from exporter.core.model import HostEvent
from exporter.hosts.libvirt.host import LibvirtHost

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Called with the whole session's items: mark only the ones below this folder.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def libvirtd_shared() -> Iterator[None]:
    """Tests that restart libvirtd hold `helpers.libvirtd_lock(exclusive=True)`; every other
    test holds it shared, so developers running suites side by side never see libvirtd
    vanish mid-test. In CI the suite is serial and the lock is always free."""
    with helpers.libvirtd_lock(exclusive=False):
        yield


@pytest.fixture
def libvirt_conn() -> Iterator[libvirt.virConnect]:
    """A connection per test: one shared by the session would die with a libvirtd restart
    (test_faults_libvirtd.py restarts it), and closing a connection it killed raises."""
    helpers.require_libvirt()
    conn = libvirt.open(helpers.URI)
    yield conn
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


@pytest.fixture
def image_folder(libvirt_conn: libvirt.virConnect) -> Iterator[Path]:
    folder = helpers.make_image_folder()
    yield folder
    helpers.remove_image_folder(folder)


@dataclass
class Domains:
    """Creates uniquely named test domains and remembers them for the cleanup."""

    conn: libvirt.virConnect
    names: list[str] = field(default_factory=list)

    def start(
        self, label: str, disks: Sequence[helpers.DiskSpec], persistent: bool = True
    ) -> libvirt.virDomain:
        name = helpers.unique_name(label)
        self.names.append(name)
        return helpers.start_domain(self.conn, name, disks, persistent)

    def define(self, label: str, disks: Sequence[helpers.DiskSpec]) -> str:
        name = helpers.unique_name(label)
        self.names.append(name)
        helpers.define_domain(self.conn, name, disks)
        return name

    def stop(self, name: str) -> None:
        helpers.stop_domain(self.conn, name)

    def remove_all(self) -> None:
        for name in self.names:
            helpers.remove_domain(self.conn, name)


@pytest.fixture
def domains(libvirt_conn: libvirt.virConnect) -> Iterator[Domains]:
    made = Domains(libvirt_conn)
    yield made
    made.remove_all()


@pytest.fixture
def nbd_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every qemu-nbd (helpers.start_nbd) the test starts, killed on the way out."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        helpers.stop_nbd(process)


@dataclass
class HostUnderTest:
    host: LibvirtHost
    events: queue.SimpleQueue[HostEvent]


@pytest.fixture
def libvirt_host(libvirt_conn: libvirt.virConnect) -> Iterator[HostUnderTest]:
    events: queue.SimpleQueue[HostEvent] = queue.SimpleQueue()
    host = LibvirtHost(helpers.URI)
    host.subscribe(events.put)
    host.observe()  # connects now, so the events of everything the test does arrive
    yield HostUnderTest(host, events)
    host.close()
