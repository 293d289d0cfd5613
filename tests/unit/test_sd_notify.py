"""The notify client against real AF_UNIX datagram sockets (filesystem path and abstract)."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.daemon.sd_notify import Notifier


class Listener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> list[str]:
        self.sock.settimeout(5)  # a safety net against a hang, not a timed assertion
        return self.sock.recv(4096).decode().split("\n")

    def notifier(self, **env: str) -> Notifier:
        return Notifier(environ={"NOTIFY_SOCKET": self.env_value, **env}, pid=1234)


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"blockpull-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield Listener(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest, path_listener: Listener, abstract_listener: Listener
) -> Listener:
    return path_listener if request.param == "path" else abstract_listener


def test_ready_sends_ready(listener: Listener) -> None:
    assert listener.notifier().ready()
    assert listener.receive() == ["READY=1"]


def test_ready_with_status_sends_both_fields_in_one_datagram(listener: Listener) -> None:
    listener.notifier().ready(status="reconciling 12 disks")
    assert listener.receive() == ["READY=1", "STATUS=reconciling 12 disks"]


def test_watchdog_sends_watchdog(listener: Listener) -> None:
    listener.notifier().watchdog()
    assert listener.receive() == ["WATCHDOG=1"]


def test_stopping_sends_stopping(listener: Listener) -> None:
    listener.notifier().stopping()
    assert listener.receive() == ["STOPPING=1"]


def test_reloading_carries_monotonic_usec(path_listener: Listener) -> None:
    notifier = Notifier(
        environ={"NOTIFY_SOCKET": path_listener.env_value}, monotonic_usec=lambda: 42_000_001
    )
    notifier.reloading()
    assert path_listener.receive() == ["RELOADING=1", "MONOTONIC_USEC=42000001"]


def test_default_monotonic_clock_is_the_processes_monotonic_clock(path_listener: Listener) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    path_listener.notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(f.split("=", 1) for f in path_listener.receive())
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


def test_status_is_flattened_to_one_line(path_listener: Listener) -> None:
    path_listener.notifier().status("policy error:\nline 3")
    assert path_listener.receive() == ["STATUS=policy error: line 3"]


def test_messages_arrive_in_order_as_separate_datagrams(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    notifier.ready()
    notifier.watchdog()
    assert [path_listener.receive(), path_listener.receive()] == [["READY=1"], ["WATCHDOG=1"]]


def test_without_notify_socket_every_call_is_a_noop() -> None:
    notifier = Notifier(environ={}, pid=1)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_enabled_when_notify_socket_is_set(path_listener: Listener) -> None:
    assert path_listener.notifier().enabled


def test_send_to_a_vanished_socket_returns_false_instead_of_raising(tmp_path: Path) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, pid=1)
    assert notifier.ready() is False


def test_unsupported_socket_scheme_disables_the_notifier() -> None:
    assert not Notifier(environ={"NOTIFY_SOCKET": "vsock:2:1234"}, pid=1).enabled


def test_watchdog_interval_is_half_the_timeout() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "7"}, pid=7)
    assert notifier.watchdog_timeout() == 60.0
    assert notifier.watchdog_interval() == 30.0


def test_watchdog_without_pid_applies_to_this_process() -> None:
    assert Notifier(environ={"WATCHDOG_USEC": "2000000"}, pid=7).watchdog_interval() == 1.0


def test_watchdog_meant_for_another_pid_is_off() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "8"}, pid=7)
    assert notifier.watchdog_interval() is None


@pytest.mark.parametrize("value", ["", "0", "-5", "soon"])
def test_watchdog_off_or_malformed_gives_none(value: str) -> None:
    assert Notifier(environ={"WATCHDOG_USEC": value}, pid=7).watchdog_interval() is None


def test_malformed_watchdog_pid_gives_none() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, pid=7)
    assert notifier.watchdog_interval() is None


def test_reads_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch, path_listener: Listener
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    assert notifier.watchdog_interval() == 5.0
    notifier.watchdog()
    assert path_listener.receive() == ["WATCHDOG=1"]
