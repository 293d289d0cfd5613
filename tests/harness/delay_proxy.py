"""A TCP proxy on loopback that delays everything it forwards: network latency for the fleet
tests where `tc netem` is not available (these machines' kernels lack sch_netem).

Each connection gets two forwarding threads; a chunk waits `delay` seconds before it is
passed on, in each direction, so a request and its answer cost 2 x delay more than direct.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from harness.loopback import free_port

CHUNK = 65536
IDLE_TIMEOUT = 120.0  # a connection nobody uses for this long is closed


class DelayProxy:
    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", free_port()))
        listener.listen(64)
        listener.settimeout(0.5)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, name="delay-proxy", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(IDLE_TIMEOUT)
                self._sockets.append(sock)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                data = source.recv(CHUNK)
                if not data:
                    break
                time.sleep(self.delay)
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def delayed(target_port: int, delay: float) -> Iterator[DelayProxy]:
    proxy = DelayProxy(target_port, delay)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
