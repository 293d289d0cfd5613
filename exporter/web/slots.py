"""A fixed number of connections served at once, and which one gives way when all are taken.

The accept loop takes a slot before it accepts, so at most `limit` connections have a thread
and a file: further clients wait in the kernel's listen backlog (beyond it the kernel refuses
them). A connection that is still waiting for its request (a slow or silent client, an idle
keep-alive connection, a TLS handshake) holds its slot loosely: when every slot is taken and
another client waits to be accepted, the one that has waited longest is shut down to make room,
once it has waited `min_wait` seconds. So idle and trickling clients cannot lock out a scraper
that sends its request at once, and a connection being answered is never cut.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import OrderedDict


class Connection:
    """One accepted connection, as the slots see it: its socket (the TLS one once wrapped)."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class ConnectionSlots:
    def __init__(self, limit: int, min_wait: float) -> None:
        self._free = threading.BoundedSemaphore(limit)
        self._min_wait = min_wait
        self._lock = threading.Lock()
        # Connections waiting for a request, longest-waiting first, with when they began.
        self._waiting: OrderedDict[Connection, float] = OrderedDict()

    def take(self, timeout: float) -> bool:
        """A free slot, making room if none is: False if none came within `timeout`."""
        if self._free.acquire(blocking=False):
            return True
        self._evict_longest_waiting()
        return self._free.acquire(timeout=timeout)

    def give_back(self) -> None:
        self._free.release()

    def waiting(self, connection: Connection) -> None:
        """The connection now waits for a request (or its TLS handshake): it may be evicted."""
        with self._lock:
            self._waiting.pop(connection, None)
            self._waiting[connection] = time.monotonic()

    def busy(self, connection: Connection) -> None:
        """The connection's request has arrived: it is answered whatever else is waiting."""
        with self._lock:
            self._waiting.pop(connection, None)

    def forget(self, connection: Connection) -> None:
        """Before its socket is closed, so an eviction never shuts down a reused descriptor."""
        self.busy(connection)

    def _evict_longest_waiting(self) -> None:
        with self._lock:
            if not self._waiting:
                return
            connection, since = next(iter(self._waiting.items()))
            if time.monotonic() - since < self._min_wait:
                return
            del self._waiting[connection]
            # socket.socket's own shutdown, not SSLSocket's: the TLS state belongs to the
            # connection's thread, which sees end of file and closes the connection.
            with contextlib.suppress(OSError):  # already gone
                socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
