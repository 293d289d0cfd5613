"""libvirt's default event loop on one thread, shared by every connection of the process.

libvirt allows `virEventRegisterDefaultImpl()` once per process and it must happen before a
connection is opened, or that connection never delivers events, keepalives or close
callbacks. So the loop is a process-wide singleton (`shared_loop()`), reference-counted: the
thread runs while at least one host holds it, and stops when the last one releases it.
Setting it up also routes libvirt's own error reports into the log (`route_errors_to_log()`).
"""

from __future__ import annotations

import functools
import logging
import threading

import libvirt

log = logging.getLogger(__name__)


class EventLoop:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="libvirt-events", daemon=True
                )
                self._thread.start()

    def release(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or self._thread is None:
                return
            self._stop.set()
            _wake()
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the libvirt event thread did not stop within %.1f s", timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt event loop iteration failed")
                self._stop.wait(0.1)  # do not spin on a persistent failure


def _wake() -> None:
    """Make a blocked `virEventRunDefaultImpl()` return: a zero timeout that removes itself."""

    def fire(timer: int, _opaque: object) -> None:
        libvirt.virEventRemoveTimeout(timer)

    libvirt.virEventAddTimeout(0, fire, None)


def route_errors_to_log() -> None:
    """Send libvirt's error reports to this module's log at debug level, not to stderr.

    libvirt's default handler prints every error as it happens (`libvirt: XML-RPC error :
    ...`), also the ones the daemon expects and handles, such as each failed reconnection.
    The errors still raise libvirtError as before; only libvirt's own report moves. The handler
    is process-wide, as libvirt's default one is.
    """
    libvirt.registerErrorHandler(_log_error, None)


def _log_error(_context: object, error: tuple[object, ...]) -> None:
    """libvirt's error handler: `error` is virGetLastError()'s tuple, its message third."""
    log.debug("libvirt: %s", error[2])


@functools.cache
def shared_loop() -> EventLoop:
    """The process's loop; registering libvirt's default implementation happens once, here."""
    libvirt.virEventRegisterDefaultImpl()
    route_errors_to_log()
    return EventLoop()
