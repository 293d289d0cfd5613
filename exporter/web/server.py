"""The HTTP(S) endpoint: accepts connections, bounded, and serves /metrics and the page at /.

Basic auth and TLS come from the web config (the checks are in `auth` and `config`); the
landing page and the metrics are callbacks given by the caller; `handler` serves each request.
At most `WebLimits.max_connections` are served at once, each in its own thread (so a TLS
handshake or a slow client never stalls the others); the rest wait in the kernel's listen
backlog, and idle or slow ones give way to new clients (`slots`). Running out of file
descriptors on accept is logged once and waited out, never fatal. Nothing here touches libvirt.
"""

from __future__ import annotations

import logging
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.web.auth import basic_credentials
from exporter.web.config import TLSConfig, WebConfig
from exporter.web.handler import RequestHandler
from exporter.web.limits import WebLimits
from exporter.web.live_config import ActiveWebConfig, LiveWebConfig
from exporter.web.slots import Connection, ConnectionSlots

log = logging.getLogger(__name__)

# 9855: free in the Prometheus default port allocations wiki at the time of writing, and clear
# of the libvirt exporters' 9177 and node_exporter's 9100 running on the same hosts.
DEFAULT_LISTEN_ADDRESS = ":9855"

_DEFAULT_LIMITS = WebLimits()
_POLL_INTERVAL = 0.1  # seconds between checks for stop() in the accept loop
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 1.0  # seconds between accepts while they fail
# Seconds without a failed accept that end an episode: its recovery is logged, and a failure
# after it is news again. Shorter gaps belong to the same episode and are not logged.
_EPISODE_QUIET = 10.0
_PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


class ListenAddressError(ValueError):
    pass


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:9855`, `0.0.0.0:9855`, `[::1]:9855`, `localhost:9855` -> (host, port); "" = all."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ListenAddressError(f"listen address {address!r}: expected HOST:PORT, e.g. :9855")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ListenAddressError(
            f"listen address {address!r}: put an IPv6 address in brackets, e.g. [::1]:9855"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenAddressError(f"listen address {address!r}: port must be 0-65535")
    return host, int(port_text)


class WebServer:
    """Serves until stop(); start() binds (port 0 picks a free port, see `port`).

    With `config_file`, the web config is loaded again from it on `reload_config()` (SIGHUP)
    and whenever it or a certificate file it names changes (`live_config`)."""

    def __init__(
        self,
        listen_address: str,
        web_config: WebConfig | None,
        render_metrics: Callable[[], bytes],
        landing_page: Callable[[], str],
        limits: WebLimits = _DEFAULT_LIMITS,
        config_file: Path | None = None,
    ) -> None:
        self._limits = limits
        self._host, self._requested_port = parse_listen_address(listen_address)
        self._listen_address = listen_address
        self._live = LiveWebConfig(
            web_config or WebConfig(source="(none)"), config_file, time.monotonic
        )
        self._render_metrics = render_metrics
        self._landing_page = landing_page
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return self._live.active.scheme

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        family, address = _bind_address(self._host, self._requested_port)
        self._server = _Server(address, family, self, self._limits)
        self._thread = threading.Thread(target=self._server.serve, name="web-server", daemon=True)
        self._thread.start()
        log.info("listening on %s (%s, port %d)", self._listen_address, self.scheme, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
        self._server = None
        self._thread = None

    def reload_config(self) -> None:
        """Load the web config file again soon (safe to call from a signal handler)."""
        self._live.request_reload()

    # Called by the accept loop and the handler threads.

    def refresh_config(self) -> None:
        self._live.refresh()

    @property
    def active(self) -> ActiveWebConfig:
        return self._live.active

    @property
    def tls(self) -> TLSConfig | None:
        return self._live.active.config.tls

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._live.active.ssl_context

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._live.active.config.headers

    def authorized(self, header: str | None) -> bool:
        auth = self._live.active.auth
        if auth is None:
            return True
        credentials = basic_credentials(header)
        return credentials is not None and auth.check(*credentials)

    def metrics(self) -> bytes:
        return self._render_metrics()

    def landing_page(self) -> str:
        return self._landing_page()


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    if host == "":
        # All interfaces: IPv6 and IPv4 on one dual-stack socket when the host has IPv6.
        if socket.has_ipv6 and _ipv6_available():
            return socket.AF_INET6, ("::", port, 0, 0)
        return socket.AF_INET, ("0.0.0.0", port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenAddressError(f"listen address {host!r}: cannot resolve: {e.strerror}") from e
    # Like Go's net.Listen: a name resolving to both families listens on its IPv4 address.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = infos[0]
    return family, address


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM):
            return True
    except OSError:
        return False


class _Server(socketserver.TCPServer):
    """Binds and listens (socketserver); the accept loop and each connection's life are here."""

    allow_reuse_address = True
    # The kernel's listen backlog (capped by net.core.somaxconn): clients wait there, holding
    # no file of ours, while every slot is taken; a deep one lets a scrape in behind a flood.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        app: WebServer,
        limits: WebLimits,
    ) -> None:
        self.address_family = family
        self.app = app
        self.limits = limits
        self.slots = ConnectionSlots(limits.max_connections, limits.evictable_after)
        self._stopping = threading.Event()
        self._backoff = 0.0  # seconds waited after the last failed accept
        self._last_failure: float | None = None  # monotonic; None: not in an episode
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # Dual stack for "::"; harmless for a specific IPv6 address.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)

    def serve(self) -> None:
        """Accept until stop(): a connection is accepted only once it has a slot."""
        self.socket.setblocking(False)  # a client gone before accept() must not block the loop
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            while not self._stopping.is_set():
                self.app.refresh_config()  # before accepting: a new client gets the new config
                if selector.select(_POLL_INTERVAL) and self.slots.take(_POLL_INTERVAL):
                    self._accept()

    def stop(self) -> None:
        self._stopping.set()

    def _accept(self) -> None:
        try:
            sock, client = self.socket.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            self.slots.give_back()  # the client left before it was accepted
            return
        except OSError as error:  # EMFILE, ENFILE, ENOBUFS: wait for files to come back
            self.slots.give_back()
            self._accept_failed(error)
            return
        try:
            threading.Thread(
                target=self._serve_connection, args=(sock, client), daemon=True
            ).start()
        except RuntimeError as error:  # no thread to be had: as short of resources as EMFILE
            sock.close()
            self.slots.give_back()
            self._accept_failed(error)
            return
        self._backoff = 0.0
        if self._last_failure is not None:
            quiet = time.monotonic() - self._last_failure
            if quiet >= _EPISODE_QUIET:
                self._last_failure = None
                log.warning("accepting connections again")

    def _accept_failed(self, error: Exception) -> None:
        """Logged once per episode, then waited out with a growing pause; never fatal."""
        if self._last_failure is None:
            log.warning(
                "cannot accept connections: %s; retrying, and saying so once it works", error
            )
        self._last_failure = time.monotonic()
        self._backoff = min(max(2 * self._backoff, _BACKOFF_FIRST), _BACKOFF_MAX)
        self._stopping.wait(self._backoff)

    def _serve_connection(self, sock: socket.socket, client: Any) -> None:
        connection = Connection(sock)
        self.slots.waiting(connection)
        try:
            active = self.app.active  # one config for the whole connection, reloads or not
            if active.ssl_context is None:
                self._handle(sock, client, connection)
            else:
                self._serve_tls(sock, client, connection, active)
        except Exception:
            self.handle_error(sock, client)
        finally:
            self.slots.forget(connection)
            self.shutdown_request(sock)
            self.slots.give_back()

    def _handle(self, sock: socket.socket, client: Any, connection: Connection) -> None:
        RequestHandler(
            sock,
            client,
            self,
            endpoint=self.app,
            limits=self.limits,
            slots=self.slots,
            connection=connection,
        )

    def _serve_tls(
        self, sock: socket.socket, client: Any, connection: Connection, active: ActiveWebConfig
    ) -> None:
        context, tls_config = active.ssl_context, active.config.tls
        assert context is not None
        sock.settimeout(self.limits.handshake_timeout)  # the whole handshake, not each read
        try:
            first = sock.recv(1, socket.MSG_PEEK)
            if not first:
                return
            if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP
                sock.sendall(_PLAIN_HTTP_ON_TLS)
                log.debug("plain HTTP from %s on the HTTPS port", client)
                return
            tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as e:  # ssl.SSLError and timeouts are OSErrors
            log.debug("TLS handshake with %s failed: %s", client, e)
            return
        connection.sock = tls  # the descriptor is the TLS socket's now
        try:
            try:
                tls.do_handshake()
                allowed = tls_config is None or tls_config.allows_peer(tls.getpeercert())
            except (OSError, ValueError) as e:
                log.debug("TLS handshake with %s failed: %s", client, e)
                return
            if not allowed:
                log.info("TLS client %s refused: no SAN in client_allowed_sans", client)
                return
            self._handle(tls, client, connection)
        finally:
            self.slots.forget(connection)  # before close: see ConnectionSlots.forget
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanish, time out or reset: worth a debug line, not a traceback. Anything
        # else is a bug here and keeps its traceback.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s ended: %s", client_address, error)
        else:
            log.exception("unexpected error serving %s", client_address)
