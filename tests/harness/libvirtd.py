"""The machine's one libvirtd (qemu:///system), shared by every engineer's suites.

Tests that stop or restart it hold `libvirtd_lock(exclusive=True)`; every other test and
benchmark holds it shared, so nobody sees libvirtd vanish mid-run. The stop/start helpers
always leave libvirtd answering when used through `libvirtd_always_restored`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt

from harness.waiting import wait_for

URI = "qemu:///system"
LIBVIRTD_LOCK = Path("/run/lock/blockpull-exporter-tests.lock")


@contextlib.contextmanager
def libvirtd_lock(exclusive: bool) -> Iterator[None]:
    """Shared for ordinary tests, exclusive for tests that stop or restart libvirtd."""
    LIBVIRTD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LIBVIRTD_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_conn(timeout: float = 30.0) -> libvirt.virConnect:
    """A fresh connection, retried while libvirtd is (re)starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- reachability ------------------------------------------------------------------------------


def libvirt_unreachable_reason(uri: str = URI) -> str | None:
    """None when libvirtd answers on `uri`, else why not."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as error:
        return f"libvirtd unreachable at {uri}: {error.get_error_message()}"
    conn.close()
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_libvirt() -> None:
    """Skip the calling test when libvirtd is unreachable, unless CI is set: there it fails."""
    import pytest  # only tests call this; benchmarks import this module without pytest

    reason = libvirt_unreachable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI is set: integration tests must run; see scripts/setup)")
    pytest.skip(f"{reason}; run scripts/setup")


# -- stopping and starting it --------------------------------------------------------------------


def libvirtd_pids() -> list[int]:
    """This machine's libvirtd. Only in our own PID namespace: a container another engineer
    boots (systemd-nspawn) runs its own libvirtd, visible to a plain pgrep but not ours."""
    command = ["pgrep", "-x", "libvirtd", "--ns", str(os.getpid()), "--nslist", "pid"]
    done = subprocess.run(command, capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def virsh_answers() -> bool:
    done = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, timeout=20)
    return done.returncode == 0


def stop_libvirtd(timeout: float = 30.0) -> None:
    """SIGTERM every libvirtd and wait until none is left; QEMU processes live on."""
    for pid in libvirtd_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not libvirtd_pids(), timeout, 0.1):
        for pid in libvirtd_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not libvirtd_pids(), 10, 0.1), "libvirtd did not exit"


def start_libvirtd(timeout: float = 60.0) -> None:
    """`libvirtd -d` unless one runs; returns once virsh answers."""
    if not libvirtd_pids():
        subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    assert wait_for(virsh_answers, timeout, 0.2), "libvirtd does not answer"


@contextlib.contextmanager
def libvirtd_always_restored() -> Iterator[None]:
    """Whatever happens inside, libvirtd runs and answers afterwards."""
    try:
        yield
    finally:
        start_libvirtd()
