"""The web config in force follows its files: certificates rotated on disk and SIGHUP reloads
apply to new connections without a restart; a broken version keeps the one in force."""

from __future__ import annotations

import logging
import shutil
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from certs import Pki, make_pki
from live_server import PASSWORD_HASH, basic, request

from exporter.web.config import load_web_config
from exporter.web.server import WebServer

DEADLINE = 5.0  # seconds: the files are looked at once a second


@pytest.fixture(scope="module")
def two_pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    return make_pki(tmp_path_factory.mktemp("old")), make_pki(tmp_path_factory.mktemp("new"))


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


def install(cert: Path, key: Path, directory: Path) -> None:
    """Put a certificate and key in place the way certbot does: new files renamed over."""
    for source, name in ((cert, "server.crt"), (key, "server.key")):
        staged = directory / f".{name}.new"
        shutil.copyfile(source, staged)
        staged.replace(directory / name)


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def handshakes(server: WebServer, context: ssl.SSLContext) -> bool:
    try:
        return request(server, context=context)[0] == 200
    except (ssl.SSLError, OSError):
        return False


def start(tmp_path: Path, text: str) -> WebServer:
    path = tmp_path / "web.yml"
    path.write_text(text)
    server = WebServer(
        "127.0.0.1:0", load_web_config(path), lambda: b"", lambda: "", config_file=path
    )
    server.start()
    return server


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


def test_a_certificate_rotated_on_disk_is_served_without_a_restart(tmp_path, two_pkis):
    old, new = two_pkis
    install(old.server_cert, old.server_key, tmp_path)
    server = start(tmp_path, TLS)
    try:
        assert handshakes(server, trusting(old))
        install(new.server_cert, new.server_key, tmp_path)
        assert eventually(lambda: handshakes(server, trusting(new)))
        assert not handshakes(server, trusting(old))
    finally:
        server.stop()


def test_a_broken_certificate_keeps_the_one_in_force_and_is_logged_once(tmp_path, two_pkis, caplog):
    old, _ = two_pkis
    install(old.server_cert, old.server_key, tmp_path)
    server = start(tmp_path, TLS)
    caplog.set_level(logging.ERROR, logger="exporter.web.live_config")
    try:
        (tmp_path / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nnot one\n")
        time.sleep(2.5)  # two looks at the files
        assert handshakes(server, trusting(old))
        failures = [r for r in caplog.records if "web config reload failed" in r.getMessage()]
        assert len(failures) == 1
    finally:
        server.stop()


def test_a_reload_request_applies_a_changed_web_config_to_new_connections(tmp_path):
    server = start(tmp_path, "")
    try:
        assert request(server)[0] == 200
        user = f"basic_auth_users:\n  prometheus: {PASSWORD_HASH.decode()}\n"
        (tmp_path / "web.yml").write_text(user)
        server.reload_config()
        assert eventually(lambda: request(server)[0] == 401)
        assert request(server, headers=basic("prometheus", "s3cret"))[0] == 200
    finally:
        server.stop()


def test_a_broken_web_config_on_reload_keeps_the_one_in_force(tmp_path, caplog):
    server = start(tmp_path, "")
    caplog.set_level(logging.ERROR, logger="exporter.web.live_config")
    try:
        (tmp_path / "web.yml").write_text("basic_auth_users: [not, a, mapping]\n")
        server.reload_config()
        assert eventually(lambda: any("reload failed" in r.getMessage() for r in caplog.records))
        assert request(server)[0] == 200
        assert server.scheme == "http"
    finally:
        server.stop()
