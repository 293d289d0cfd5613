"""The HTTP(S) endpoint: /metrics and the landing page at /, with basic auth and TLS from the web
config (the checks themselves are in `auth` and `config`; the page is given by the caller).

A thread per connection (`ThreadingHTTPServer`, daemon threads); the TLS handshake happens in
that thread, not in the accept loop, so one slow or hostile client cannot stall the others.
Responses only read what the callbacks return; nothing here touches libvirt.
"""

from __future__ import annotations

import gzip
import logging
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from exporter.web.auth import BasicAuth, basic_credentials
from exporter.web.config import TLSConfig, WebConfig

log = logging.getLogger(__name__)

# 9855: free in the Prometheus default port allocations wiki at the time of writing, and clear
# of the libvirt exporters' 9177 and node_exporter's 9100 running on the same hosts.
DEFAULT_LISTEN_ADDRESS = ":9855"

# The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REALM = "blockpull-exporter"
_ALLOW = "GET, HEAD"
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_HANDSHAKE_TIMEOUT = 10.0  # seconds a client gets to finish the TLS handshake
_IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may idle (Prometheus scrapes every 15-60 s)
_GZIP_LEVEL = 1  # ~2 ms for a 4,000-disk page, 18x smaller; higher levels gain little
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
    """Serves until stop(); start() binds (port 0 picks a free port, see `port`)."""

    def __init__(
        self,
        listen_address: str,
        web_config: WebConfig | None,
        render_metrics: Callable[[], bytes],
        landing_page: Callable[[], str],
    ) -> None:
        self._host, self._requested_port = parse_listen_address(listen_address)
        self._listen_address = listen_address
        self._config = web_config or WebConfig(source="(none)")
        self._ssl_context = self._config.ssl_context()
        self._auth = (
            BasicAuth(self._config.basic_auth_users) if self._config.basic_auth_users else None
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
        return "http" if self._ssl_context is None else "https"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        family, address = _bind_address(self._host, self._requested_port)
        self._server = _Server(address, family, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="web-server",
            daemon=True,
        )
        self._thread.start()
        log.info("listening on %s (%s, port %d)", self._listen_address, self.scheme, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    # Called by the handler threads.

    @property
    def tls(self) -> TLSConfig | None:
        return self._config.tls

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._config.headers

    def authorized(self, header: str | None) -> bool:
        if self._auth is None:
            return True
        credentials = basic_credentials(header)
        return credentials is not None and self._auth.check(*credentials)

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


def _accepts_gzip(header: str | None) -> bool:
    for part in (header or "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and _q_is_zero(q[2:]))
    return False


def _q_is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self, address: tuple[Any, ...], family: socket.AddressFamily, app: WebServer
    ) -> None:
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # Dual stack for "::"; harmless for a specific IPv6 address.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Skip HTTPServer.server_bind: its getfqdn() can block on DNS at start.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's own thread.
        context = self.app.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        tls = _handshake(request, context, self.app.tls, client_address)
        if tls is None:
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanish, time out or reset: worth a debug line, not a traceback. Anything
        # else is a bug here and keeps its traceback.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s ended: %s", client_address, error)
        else:
            log.exception("unexpected error serving %s", client_address)


def _handshake(
    sock: socket.socket, context: ssl.SSLContext, tls: TLSConfig | None, client: Any
) -> ssl.SSLSocket | None:
    sock.settimeout(_HANDSHAKE_TIMEOUT)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            return None
        if first != b"\x16":  # not a TLS handshake record: most likely plain HTTP
            sock.sendall(_PLAIN_HTTP_ON_TLS)
            log.debug("plain HTTP from %s on the HTTPS port", client)
            return None
        wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            wrapped.do_handshake()
            if tls is not None and not tls.allows_peer(wrapped.getpeercert()):
                log.info("TLS client %s refused: no SAN in client_allowed_sans", client)
                wrapped.close()
                return None
        except BaseException:
            wrapped.close()
            raise
    except (OSError, ValueError) as e:  # ssl.SSLError and timeouts are OSErrors
        log.debug("TLS handshake with %s failed: %s", client, e)
        return None
    wrapped.settimeout(_IDLE_TIMEOUT)
    return wrapped


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    # Answer garbage with a real status line, never an HTTP/0.9 bare body.
    default_request_version = "HTTP/1.0"
    server_version = "blockpull-exporter"
    timeout = _IDLE_TIMEOUT
    server: _Server

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def send_response_only(self, code: int, message: str | None = None) -> None:
        if self.request_version == "HTTP/0.9":
            # Said explicitly ("GET / HTTP/0.9"), http.server would answer with a bare body,
            # no status line and no headers: answer as HTTP/1.0 and close instead.
            self.request_version = "HTTP/1.0"
            self.close_connection = True
        super().send_response_only(code, message)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD>; every method but GET and HEAD gets a 405.
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        if self._authorized():
            self._respond(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"Method not allowed; use GET or HEAD.\n",
                extra=(("Allow", _ALLOW),),
            )

    def _serve(self, *, head: bool) -> None:
        if not self._authorized():
            return
        try:
            response = self._route(urlsplit(self.path).path)
        except Exception:  # a bug in a callback: answer 500, keep serving
            log.exception("serving %s failed", self.path)
            response = (HTTPStatus.INTERNAL_SERVER_ERROR, b"Internal error.\n", _TEXT, ())
        # Outside the try: a client gone mid-write is the server's business (handle_error).
        self._respond(*response, head=head)

    def _route(self, path: str) -> tuple[HTTPStatus, bytes, str, tuple[tuple[str, str], ...]]:
        app = self.server.app
        if path == "/metrics":
            body = app.metrics()
            extra: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
                extra += (("Content-Encoding", "gzip"),)
            return HTTPStatus.OK, body, CONTENT_TYPE, extra
        if path == "/":
            return HTTPStatus.OK, app.landing_page().encode("utf-8"), _HTML, ()
        return HTTPStatus.NOT_FOUND, b"Not found; try /metrics.\n", _TEXT, ()

    def _authorized(self) -> bool:
        if self.server.app.authorized(self.headers.get("Authorization")):
            return True
        self._respond(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized.\n",
            extra=(("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),),
            head=self.command == "HEAD",
        )
        return False

    def _respond(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str = _TEXT,
        extra: tuple[tuple[str, str], ...] = (),
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        if status >= 400 and self.command not in ("GET", "HEAD"):
            # The request body (if any) was not read: do not reuse the connection.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def end_headers(self) -> None:
        for name, value in self.server.app.headers:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
