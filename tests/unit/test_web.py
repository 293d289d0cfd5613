"""The HTTP(S) endpoint, driven by real clients (http.client, raw sockets, curl) on loopback."""

from __future__ import annotations

import gzip
import http.client
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from certs import Pki, make_pki
from live_server import BODY, PASSWORD_HASH, TIMEOUT, request, serving, write_config

from exporter.web.config import WebConfig
from exporter.web.server import DEFAULT_LISTEN_ADDRESS, ListenAddressError, parse_listen_address


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(directory: Path, pki: Pki, extra: str = "") -> WebConfig:
    return write_config(
        directory,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        + extra,
    )


def mtls_config(directory: Path, pki: Pki, extra: str = "") -> WebConfig:
    return tls_config(
        directory,
        pki,
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki.ca_cert}\n" + extra,
    )


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def curl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )


# Listen addresses.


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9855", ("", 9855)),
        ("0.0.0.0:9855", ("0.0.0.0", 9855)),
        ("[::1]:9855", ("::1", 9855)),
        ("localhost:9855", ("localhost", 9855)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_listen_address_forms_parse(address: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9855", "::1:9855", "host:", "host:http", "host:65536"])
def test_malformed_listen_address_is_refused(address: str) -> None:
    with pytest.raises(ListenAddressError):
        parse_listen_address(address)


def test_default_listen_address_is_port_9855_on_all_interfaces() -> None:
    assert parse_listen_address(DEFAULT_LISTEN_ADDRESS) == ("", 9855)


def test_all_interfaces_address_serves_ipv4_loopback() -> None:
    with serving(address=":0") as server:
        assert request(server)[0] == 200


def test_localhost_name_is_resolved() -> None:
    with serving(address="localhost:0") as server:
        assert request(server, host="localhost")[0] == 200


def test_ipv6_loopback_address_is_served() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    with serving(address="[::1]:0") as server:
        assert request(server, host="::1")[0] == 200


# Plain HTTP behaviour.


def test_metrics_are_served_with_the_prometheus_content_type() -> None:
    with serving() as server:
        status, headers, body = request(server)
    assert (status, body) == (200, BODY)
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_metrics_are_gzipped_when_the_client_accepts_it() -> None:
    with serving() as server:
        status, headers, body = request(server, headers={"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == BODY


def test_gzip_refused_with_q_zero_is_not_used() -> None:
    with serving() as server:
        _, headers, body = request(server, headers={"Accept-Encoding": "gzip;q=0"})
    assert headers["Content-Encoding"] is None
    assert body == BODY


def test_head_returns_headers_without_a_body() -> None:
    with serving() as server:
        status, headers, body = request(server, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str(len(BODY))


def test_landing_page_is_html() -> None:
    with serving() as server:
        status, headers, body = request(server, path="/")
    assert (status, body) == (200, b"<html>landing</html>")
    assert headers["Content-Type"] == "text/html; charset=utf-8"


def test_unknown_path_is_404() -> None:
    with serving() as server:
        assert request(server, path="/metricz")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_get_405_with_allow(method: str) -> None:
    with serving() as server:
        status, headers, _ = request(server, method)
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


def test_malformed_request_gets_400_without_traceback(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.web.server")
    with serving() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"\x00\xff GARBAGE \xfe\r\n\r\n")
            reply = sock.recv(4096)
        assert request(server)[0] == 200
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info]


def test_client_disconnecting_mid_request_leaves_the_server_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.web.server")
    with serving() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line, then gone
        assert request(server)[0] == 200
    assert not [r for r in caplog.records if r.exc_info]


def test_failing_renderer_gives_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = []

    def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return BODY

    with serving(render=render) as server:
        assert request(server)[0] == 500
        assert request(server)[0] == 200


def test_configured_headers_are_on_every_response(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    )
    with serving(config) as server:
        for path in ("/metrics", "/", "/nope"):
            assert request(server, path=path)[1]["X-Content-Type-Options"] == "nosniff"


# Basic auth.


# TLS.


def test_https_serves_metrics_to_a_client_trusting_the_ca(tmp_path: Path, pki: Pki) -> None:
    with serving(tls_config(tmp_path, pki)) as server:
        assert server.scheme == "https"
        assert request(server, context=client_context(pki))[:3:2] == (200, BODY)


def test_curl_fetches_metrics_over_https(tmp_path: Path, pki: Pki) -> None:
    with serving(tls_config(tmp_path, pki)) as server:
        result = curl("--cacert", pki.ca_cert, f"https://127.0.0.1:{server.port}/metrics")
    assert (result.returncode, result.stdout) == (0, BODY.decode())


def test_https_with_basic_auth_via_curl(tmp_path: Path, pki: Pki) -> None:
    config = tls_config(tmp_path, pki, f"basic_auth_users:\n  alice: '{PASSWORD_HASH.decode()}'\n")
    url_args = ("--cacert", pki.ca_cert, "-o", "/dev/null", "-w", "%{http_code}")
    with serving(config) as server:
        url = f"https://127.0.0.1:{server.port}/metrics"
        good = curl(*url_args, "-u", "alice:s3cret", url)
        bad = curl(*url_args, "-u", "alice:nope", url)
    assert (good.returncode, good.stdout) == (0, "200")
    assert (bad.returncode, bad.stdout) == (0, "401")


def test_plain_http_on_the_https_port_fails_cleanly_and_serving_continues(
    tmp_path: Path, pki: Pki
) -> None:
    with serving(tls_config(tmp_path, pki)) as server:
        status, _, body = request(server)  # plain http.client against HTTPS
        assert (status, body) == (400, b"Client sent an HTTP request to an HTTPS server.\n")
        assert request(server, context=client_context(pki))[0] == 200


def test_client_that_does_not_trust_the_server_cannot_connect(tmp_path: Path, pki: Pki) -> None:
    untrusting = ssl.create_default_context(cafile=str(pki.other_ca_cert))
    with serving(tls_config(tmp_path, pki)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            request(server, context=untrusting)
        assert request(server, context=client_context(pki))[0] == 200


def test_mutual_tls_accepts_a_client_certificate_from_the_ca(tmp_path: Path, pki: Pki) -> None:
    context = client_context(pki, pki.client_cert, pki.client_key)
    with serving(mtls_config(tmp_path, pki)) as server:
        assert request(server, context=context)[0] == 200


def test_mutual_tls_accepts_curl_with_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with serving(mtls_config(tmp_path, pki)) as server:
        result = curl(
            "--cacert", pki.ca_cert, "--cert", pki.client_cert, "--key", pki.client_key,
            f"https://127.0.0.1:{server.port}/metrics",
        )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, BODY.decode())


@pytest.mark.parametrize("who", ["no-certificate", "other-ca"])
def test_mutual_tls_refuses_the_handshake(tmp_path: Path, pki: Pki, who: str) -> None:
    if who == "no-certificate":
        context = client_context(pki)
    else:
        context = client_context(pki, pki.other_client_cert, pki.other_client_key)
    with serving(mtls_config(tmp_path, pki)) as server:
        # TLS 1.3: the client learns of the refusal on its first read, as an alert or a reset.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(server, context=context)
        assert (
            request(server, context=client_context(pki, pki.client_cert, pki.client_key))[0] == 200
        )


@pytest.mark.parametrize("who", ["no-certificate", "other-ca"])
def test_mutual_tls_refuses_curl(tmp_path: Path, pki: Pki, who: str) -> None:
    identity: tuple[str | Path, ...] = ()
    if who == "other-ca":
        identity = ("--cert", pki.other_client_cert, "--key", pki.other_client_key)
    with serving(mtls_config(tmp_path, pki)) as server:
        result = curl("--cacert", pki.ca_cert, *identity, f"https://127.0.0.1:{server.port}/")
    assert result.returncode != 0
    assert result.stdout == ""


def test_client_certificate_without_an_allowed_san_is_refused(tmp_path: Path, pki: Pki) -> None:
    config = mtls_config(tmp_path, pki, "  client_allowed_sans: [prometheus.example]\n")
    context = client_context(pki, pki.client_cert, pki.client_key)  # SAN scraper.example
    with (
        serving(config) as server,
        pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)),
    ):
        request(server, context=context)


def test_client_certificate_with_an_allowed_san_is_served(tmp_path: Path, pki: Pki) -> None:
    config = mtls_config(tmp_path, pki, "  client_allowed_sans: [scraper.example]\n")
    context = client_context(pki, pki.client_cert, pki.client_key)
    with serving(config) as server:
        assert request(server, context=context)[0] == 200


def test_stop_releases_the_port() -> None:
    with serving() as server:
        port = server.port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_optional_client_certificate_lets_clients_without_one_in(tmp_path: Path, pki: Pki) -> None:
    config = tls_config(
        tmp_path,
        pki,
        f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.ca_cert}\n",
    )
    stranger = client_context(pki, pki.other_client_cert, pki.other_client_key)
    with serving(config) as server:
        assert request(server, context=client_context(pki))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(server, context=stranger)
