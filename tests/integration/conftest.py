"""Fixtures for tests against a real libvirtd + QEMU (qemu:///system; see scripts/setup).

Every test in tests/integration is marked `integration`. A test that needs libvirt asks for
`libvirt_conn` (directly or through `domains`/`image_folder`/`libvirt_host`): when libvirtd
does not answer it is skipped, unless the environment variable CI is set, where it fails
instead. Everything created here (domains, image folders, qemu-nbd servers, hosts) is removed
even when a test fails. The pieces themselves live in the `harness` package (tests/harness).
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from harness.failing_storage import NbdServer
from harness.libvirt_lab import Lab
from harness.libvirtd import URI, libvirtd_lock, require_libvirt

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
    """Tests that restart libvirtd hold `libvirtd_lock(exclusive=True)`; every other test
    holds it shared, so developers running suites side by side never see libvirtd vanish
    mid-test. In CI the suite is serial and the lock is always free."""
    with libvirtd_lock(exclusive=False):
        yield


@pytest.fixture
def libvirt_conn() -> Iterator[libvirt.virConnect]:
    """A connection per test: one shared by the session would die with a libvirtd restart
    (test_faults_libvirtd.py restarts it), and closing a connection it killed raises."""
    require_libvirt()
    conn = libvirt.open(URI)
    yield conn
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


@pytest.fixture
def domains(libvirt_conn: libvirt.virConnect) -> Iterator[Lab]:
    """The test's lab: its uniquely named domains and its image folder, removed afterwards."""
    lab = Lab.open(libvirt_conn)
    yield lab
    lab.close()


@pytest.fixture
def image_folder(domains: Lab) -> Path:
    return domains.folder


@pytest.fixture
def nbd_servers() -> Iterator[list[NbdServer]]:
    """Every qemu-nbd the test starts, killed on the way out."""
    started: list[NbdServer] = []
    yield started
    for server in started:
        server.kill()


@dataclass
class HostUnderTest:
    host: LibvirtHost
    events: queue.SimpleQueue[HostEvent]


@pytest.fixture
def libvirt_host(libvirt_conn: libvirt.virConnect) -> Iterator[HostUnderTest]:
    events: queue.SimpleQueue[HostEvent] = queue.SimpleQueue()
    host = LibvirtHost(URI)
    host.subscribe(events.put)
    host.observe()  # connects now, so the events of everything the test does arrive
    yield HostUnderTest(host, events)
    host.close()
