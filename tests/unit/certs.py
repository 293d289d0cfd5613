"""Throw-away test PKIs made with the real `openssl` CLI (EC keys: fast to generate)."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path  # SAN IP:127.0.0.1, DNS:localhost
    server_key: Path
    client_cert: Path  # SAN DNS:scraper.example, signed by ca_cert
    client_key: Path
    other_ca_cert: Path
    other_client_cert: Path  # same SAN, signed by other_ca_cert
    other_client_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(
    directory: Path, name: str, ca: tuple[Path, Path], san: str, usage: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", extensions,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    ca = _ca(directory, "ca")
    other_ca = _ca(directory, "other-ca")
    server = _leaf(directory, "server", ca, "IP:127.0.0.1,DNS:localhost", "serverAuth")
    client = _leaf(directory, "client", ca, "DNS:scraper.example", "clientAuth")
    other = _leaf(directory, "other-client", other_ca, "DNS:scraper.example", "clientAuth")
    return Pki(
        ca_cert=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca_cert=other_ca[0],
        other_client_cert=other[0],
        other_client_key=other[1],
    )


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake in memory, no socket; the client's end, or the ssl.SSLError it raised."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_end = client.wrap_bio(client_in, client_out, server_hostname="localhost")
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # a TLS 1.2 handshake takes two round trips, 1.3 one
        finished = True
        for end in (client_end, server_end):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                finished = False
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished:
            return client_end
    raise AssertionError("the handshake did not finish")
