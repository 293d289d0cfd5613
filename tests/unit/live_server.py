"""A WebServer on loopback and a client for it, shared by the web endpoint's tests."""

from __future__ import annotations

import base64
import http.client
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt

from exporter.web.config import WebConfig, load_web_config
from exporter.web.limits import WebLimits
from exporter.web.server import WebServer

BODY = b'# TYPE blockpull_build_info gauge\nblockpull_build_info{version="t"} 1\n'
TIMEOUT = 10
DEFAULT_LIMITS = WebLimits()
PASSWORD_HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))  # cost 4: fast tests


@contextmanager
def serving(
    config: WebConfig | None = None,
    render: Callable[[], bytes] = lambda: BODY,
    address: str = "127.0.0.1:0",
    limits: WebLimits = DEFAULT_LIMITS,
) -> Iterator[WebServer]:
    server = WebServer(address, config, render, lambda: "<html>landing</html>", limits)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def request(
    server: WebServer,
    method: str = "GET",
    path: str = "/metrics",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            host, server.port, timeout=TIMEOUT
        )
    else:
        conn = http.client.HTTPSConnection(host, server.port, timeout=TIMEOUT, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_config(directory: Path, text: str) -> WebConfig:
    path = directory / "web.yml"
    path.write_text(text)
    return load_web_config(path)
