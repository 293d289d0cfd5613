"""Reading a request from a client that may be slow on purpose: a deadline and a size cap.

A socket timeout bounds each read, not a request: a client sending one byte a second never
trips it. `RequestReader` sits under the handler's buffered `rfile` and gives the whole request
head (and the small body that may follow it) one deadline and one byte budget. Between
requests on a keep-alive connection it waits up to an idle timeout for the first byte, and the
deadline starts with that byte.
"""

from __future__ import annotations

import io
import socket
import time


class RequestTooLargeError(Exception):
    """The request head (with its body) went over the byte budget."""


class RequestReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline_seconds: float, max_bytes: int) -> None:
        super().__init__()
        self._sock = sock
        self._deadline_seconds = deadline_seconds
        self._max_bytes = max_bytes
        self._deadline: float | None = None
        self._first_byte_timeout: float | None = None
        self._received = 0
        self._limited = False

    def expect_request(self, idle_timeout: float | None) -> None:
        """Limits on from now: the deadline starts now, or with the first byte when a keep-alive
        connection may first idle for `idle_timeout` seconds."""
        self._limited = True
        self._received = 0
        self._first_byte_timeout = idle_timeout
        self._deadline = None if idle_timeout is not None else self._now_plus_deadline()

    def request_read(self, timeout: float) -> None:
        """Limits off while the response is written; `timeout` bounds each later socket call."""
        self._limited = False
        self._sock.settimeout(timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._limited:
            return self._sock.recv_into(buffer)
        if self._deadline is None:  # idle between requests: only the first byte is awaited
            self._sock.settimeout(self._first_byte_timeout)
            count = self._sock.recv_into(buffer, 1)
            self._deadline = self._now_plus_deadline()
        else:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"request not complete within {self._deadline_seconds:g} s")
            self._sock.settimeout(remaining)
            count = self._sock.recv_into(buffer)
        self._received += count
        if self._received > self._max_bytes:
            raise RequestTooLargeError(f"request head over {self._max_bytes} bytes")
        return count

    def _now_plus_deadline(self) -> float:
        return time.monotonic() + self._deadline_seconds
