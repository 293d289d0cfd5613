"""libvirt's error reports go to the daemon's log at debug level, not to stderr.

libvirt's default handler prints `libvirt: <source> error : <message>` on stderr for every
error, the expected ones too (each reconnection attempt while libvirtd is down). The
in-process `test:///default` driver provokes a real libvirt error without a libvirtd.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import libvirt
import pytest

from exporter.hosts.libvirt import event_loop as libvirt_loop
from exporter.hosts.libvirt.event_loop import route_errors_to_log

LOGGER = libvirt_loop.__name__


@pytest.fixture(autouse=True)
def default_handler() -> Iterator[None]:
    """libvirt's own handler (None restores it) before and after: the handler is process-wide,
    and a test that set up the shared loop earlier in this process left the routing on."""
    libvirt.registerErrorHandler(None, None)
    yield
    libvirt.registerErrorHandler(None, None)


def provoke_error() -> libvirt.libvirtError:
    conn = libvirt.open("test:///default")
    try:
        with pytest.raises(libvirt.libvirtError) as raised:
            conn.lookupByName("no-such-domain")
    finally:
        conn.close()
    return raised.value


def test_without_the_handler_libvirt_prints_its_errors_on_stderr(
    capfd: pytest.CaptureFixture[str],
) -> None:
    provoke_error()
    assert "libvirt: Test Driver error : Domain not found" in capfd.readouterr().err


def test_routed_errors_are_logged_at_debug_level_and_not_printed(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    route_errors_to_log()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        provoke_error()
    assert capfd.readouterr().err == ""
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, "libvirt: Domain not found")
    ]


def test_routed_errors_still_raise_with_their_code() -> None:
    route_errors_to_log()
    assert provoke_error().get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def test_setting_up_the_shared_loop_routes_the_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(libvirt, "virEventRegisterDefaultImpl", lambda: calls.append("loop"))
    monkeypatch.setattr(libvirt_loop, "route_errors_to_log", lambda: calls.append("errors"))
    libvirt_loop.shared_loop.__wrapped__()  # uncached: the process's own loop stays as it is
    assert calls == ["loop", "errors"]
