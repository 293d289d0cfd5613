"""A dependency-free client of systemd's notify protocol (sd_notify(3)).

The daemon tells systemd when it is ready, alive (watchdog), reloading or stopping by sending
one datagram of newline-separated `KEY=VALUE` fields to the AF_UNIX socket named by
$NOTIFY_SOCKET. Outside systemd (no $NOTIFY_SOCKET) every call is a no-op, so the daemon can
call it unconditionally. A lost notification must never take the daemon down: errors are
reported as a False return value, never raised.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

MonotonicUsec = Callable[[], int]


def _monotonic_usec() -> int:
    # time.monotonic_ns reads CLOCK_MONOTONIC on Linux, the clock systemd compares against.
    return time.monotonic_ns() // 1000


def _socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or `@name` for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and other schemes are not for a host daemon


class Notifier:
    """Sends notify messages to the socket systemd gave this process.

    `environ` and `pid` are injectable so tests need not touch the real environment.
    """

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
        monotonic_usec: MonotonicUsec = _monotonic_usec,
    ) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._pid = os.getpid() if pid is None else pid
        self._monotonic_usec = monotonic_usec

    @property
    def enabled(self) -> bool:
        """True when systemd listens (Type=notify); otherwise every send is a no-op."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one datagram. False if disabled or the send failed."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: systemd marks the unit active."""
        return self.send("READY=1", *self._status_field(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; follow with ready() when it ends, whatever its outcome.

        MONOTONIC_USEC is what systemd >= 253 requires for Type=notify-reload; older
        versions ignore it.
        """
        fields = ["RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}"]
        return self.send(*fields, *self._status_field(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: systemd stops expecting watchdog pings."""
        return self.send("STOPPING=1", *self._status_field(status))

    def watchdog(self) -> bool:
        """Keep-alive ping; send it from the loop whose liveness it proves."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Free-form one-line status shown by `systemctl status`."""
        return self.send(*self._status_field(text))

    def watchdog_timeout(self) -> float | None:
        """WatchdogSec= in seconds, or None when the watchdog is off or meant for another PID."""
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != self._pid:
                    return None
            except ValueError:
                return None
        return usec / 1_000_000

    def watchdog_interval(self) -> float | None:
        """How often to ping: half the timeout, as sd_watchdog_enabled(3) recommends."""
        timeout = self.watchdog_timeout()
        return None if timeout is None else timeout / 2

    @staticmethod
    def _status_field(status: str | None) -> list[str]:
        # STATUS is one line; a newline would start a new (bogus) field.
        return [] if status is None else ["STATUS=" + " ".join(status.splitlines())]
