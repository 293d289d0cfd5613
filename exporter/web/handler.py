"""One HTTP connection's requests: limits on what the client sends, auth, routing, responses.

Every request head has a deadline and a byte budget (`RequestReader`); a request body is read
and thrown away per Content-Length, up to a small cap, so it is never parsed as a request of its
own; a body over the cap, a malformed length or any Transfer-Encoding gets an error and the
connection is closed. Keep-alive connections wait for their next request as `waiting` in the
server's slots, so they give way to new clients when every slot is taken.
"""

from __future__ import annotations

import gzip
import io
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import urlsplit

from exporter.web.auth import PasswordChecksBusyError
from exporter.web.limits import WebLimits
from exporter.web.request_reader import RequestReader, RequestTooLargeError
from exporter.web.slots import Connection, ConnectionSlots

# One logger for the endpoint, whichever module of it writes.
log = logging.getLogger("exporter.web.server")

# The Prometheus text exposition format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REALM = "blockpull-exporter"
_ALLOW = "GET, HEAD"
_TEXT = "text/plain; charset=utf-8"
_HTML = "text/html; charset=utf-8"
_GZIP_LEVEL = 1  # ~2 ms for a 4,000-disk page, 18x smaller; higher levels gain little

Response = tuple[HTTPStatus, bytes, str, tuple[tuple[str, str], ...]]


class Endpoint(Protocol):
    """What the handler serves; the web server provides it."""

    @property
    def headers(self) -> tuple[tuple[str, str], ...]: ...

    def authorized(self, header: str | None) -> bool: ...

    def metrics(self) -> bytes: ...

    def landing_page(self) -> str: ...


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection
    # Answer garbage with a real status line, never an HTTP/0.9 bare body.
    default_request_version = "HTTP/1.0"
    server_version = "blockpull-exporter"

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: Any,
        *,
        endpoint: Endpoint,
        limits: WebLimits,
        slots: ConnectionSlots,
        connection: Connection,
    ) -> None:
        self.timeout = limits.idle_timeout  # StreamRequestHandler sets it on the socket
        self._endpoint = endpoint
        self._limits = limits
        self._slots = slots
        self._slot_connection = connection
        self._requests = 0
        super().__init__(request, client_address, server)  # serves the connection

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket file: replaced by one with limits
        self._reader = RequestReader(
            self.connection, self._limits.request_timeout, self._limits.max_request_head
        )
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._slots.waiting(self._slot_connection)
        # A new connection must send its request at once; a kept-alive one may idle first.
        self._reader.expect_request(self._limits.idle_timeout if self._requests else None)
        self._requests += 1
        try:
            super().handle_one_request()
        except RequestTooLargeError:
            self.requestline, self.command = "", ""
            self.request_version = self.default_request_version
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"Request head too large.\n")

    def parse_request(self) -> bool:
        """The head, then the body thrown away; False when an error was sent instead."""
        if not super().parse_request() or not self._discard_body():
            return False
        self._slots.busy(self._slot_connection)
        self._reader.request_read(self._limits.idle_timeout)
        return True

    def _discard_body(self) -> bool:
        if "Transfer-Encoding" in self.headers:
            self._refuse(HTTPStatus.BAD_REQUEST, b"Transfer-Encoding is not accepted.\n")
            return False
        lengths = set(self.headers.get_all("Content-Length") or ())
        if not lengths:
            return True
        text = lengths.pop().strip()
        if lengths or not (text.isascii() and text.isdigit()):
            self._refuse(HTTPStatus.BAD_REQUEST, b"Malformed Content-Length.\n")
            return False
        length = int(text)
        if length > self._limits.max_request_body:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"Request body too large.\n")
            return False
        if len(self.rfile.read(length)) < length:  # the client left mid-body
            self.close_connection = True
            return False
        return True

    def finish(self) -> None:
        self._slots.forget(self._slot_connection)
        super().finish()

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

    def _route(self, path: str) -> Response:
        if path == "/metrics":
            body = self._endpoint.metrics()
            extra: tuple[tuple[str, str], ...] = (("Vary", "Accept-Encoding"),)
            if _accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
                extra += (("Content-Encoding", "gzip"),)
            return HTTPStatus.OK, body, CONTENT_TYPE, extra
        if path == "/":
            return HTTPStatus.OK, self._endpoint.landing_page().encode("utf-8"), _HTML, ()
        return HTTPStatus.NOT_FOUND, b"Not found; try /metrics.\n", _TEXT, ()

    def _authorized(self) -> bool:
        try:
            if self._endpoint.authorized(self.headers.get("Authorization")):
                return True
        except PasswordChecksBusyError:
            self._refuse(
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"Too many password checks at once; retry shortly.\n",
                extra=(("Retry-After", "1"),),
            )
            return False
        self._respond(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized.\n",
            extra=(("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),),
            head=self.command == "HEAD",
        )
        return False

    def _refuse(
        self, status: HTTPStatus, body: bytes, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """An error after which the connection is not reused (its input cannot be trusted)."""
        self.close_connection = True
        self._respond(
            status, body, extra=(*extra, ("Connection", "close")), head=self.command == "HEAD"
        )

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
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def end_headers(self) -> None:
        for name, value in self._endpoint.headers:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


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
