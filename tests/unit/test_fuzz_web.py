"""Fuzzing the web endpoint's request handling: whatever bytes a client sends, a live
WebServer on loopback answers with an HTTP status line or closes the connection cleanly,
within a timeout, and logs no traceback."""

from __future__ import annotations

import logging
import socket
import string
from collections.abc import Iterator

import pytest
from example_counts import scaled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.web.server import WebServer

BODY = b'# TYPE blockpull_build_info gauge\nblockpull_build_info{version="t"} 1\n'
TIMEOUT = 5.0  # a hang fails the example instead of the whole run
MAX_RESPONSE = 1 << 20


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[WebServer, Records]]:
    records = Records()
    logger = logging.getLogger("exporter.web.server")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    server = WebServer("127.0.0.1:0", None, lambda: BODY, lambda: "<html>landing</html>")
    server.start()
    try:
        yield server, records
    finally:
        server.stop()
        logger.removeHandler(records)
        logger.setLevel(level)


TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT"]),
    st.text(TOKEN, min_size=1, max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
paths = st.one_of(
    st.sampled_from(["/", "/metrics", "/metrics?x=1", "*", "//metrics", "/%00", "/../etc"]),
    st.text(max_size=64).map(lambda t: "/" + t),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1x", ""])
header_names = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Accept-Encoding",
            "Authorization",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
        ]
    ),
    st.text(TOKEN, min_size=1, max_size=20),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)
header_values = st.one_of(
    st.sampled_from(
        [
            "gzip",
            "gzip;q=0",
            "*;q=abc",
            "Basic !!!",
            "Basic Og==",
            "-1",
            "99999999999",
            "chunked",
            "close",
            "keep-alive",
            "100-continue",
            "",
        ]
    ),
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
)
line_ends = st.sampled_from(["\r\n", "\n", "\r"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:  # sometimes plain garbage
        return draw(st.binary(max_size=512))
    end = draw(line_ends)
    parts = [draw(methods), draw(paths)]
    version = draw(versions)
    if version:
        parts.append(version)
    lines = [" ".join(parts)]
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=8)):
        lines.append(f"{name}: {value}")
    head = end.join(lines) + end + end
    body = draw(st.binary(max_size=256))
    data = head.encode("utf-8", "surrogateescape") + body
    if draw(st.booleans()):  # cut anywhere: a client that sends half a request and hangs up
        data = data[: draw(st.integers(0, len(data)))]
    return data


def exchange(port: int, data: bytes) -> bytes:
    """Send, half-close, read until the server closes; raises socket.timeout on a hang."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        received = b""
        while len(received) < MAX_RESPONSE:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break  # closed with unread data: a clean close as far as HTTP goes
            if not chunk:
                break
            received += chunk
        return received


def problems(records: Records) -> list[str]:
    return [
        record.getMessage()
        for record in records.records
        if record.exc_info is not None or record.levelno >= logging.ERROR
    ]


@settings(
    max_examples=scaled(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=requests())
def test_any_request_gets_a_status_line_or_a_clean_close(
    served: tuple[WebServer, Records], data: bytes
) -> None:
    server, records = served
    response = exchange(server.port, data)
    assert response == b"" or response.startswith((b"HTTP/1.0 ", b"HTTP/1.1 ")), response[:200]
    assert not problems(records), problems(records)


@settings(max_examples=scaled(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=requests())
def test_a_good_request_still_works_after_any_request(
    served: tuple[WebServer, Records], data: bytes
) -> None:
    server, _ = served
    exchange(server.port, data)
    good = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = exchange(server.port, good)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(BODY)


def test_an_idle_client_does_not_block_others(
    served: tuple[WebServer, Records],
) -> None:
    server, _ = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT):
        good = b"GET /metrics HTTP/1.0\r\n\r\n"
        assert exchange(server.port, good).startswith(b"HTTP/1.1 200 ")
