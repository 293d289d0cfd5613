"""TLS for the web endpoint: the settings a web config gives, and the server context they build.

Mozilla's "intermediate" profile by default: TLS 1.2 and 1.3 only, TLS 1.2 with ECDHE key
exchange and AEAD ciphers only (TLS 1.3 suites are OpenSSL's, all of them ECDHE and AEAD).
The context is built from the PEM bytes read and checked at load, never from the files again.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

TLS = "tls_server_config"  # the web config section, for the keys named in errors


class TLSSetupError(Exception):
    """OpenSSL refused a setting; `key` is the web config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ClientAuth(StrEnum):
    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


UNSUPPORTED_CLIENT_AUTH = {
    ClientAuth.REQUEST_CLIENT_CERT,
    ClientAuth.REQUIRE_ANY_CLIENT_CERT,
}
_VERIFY_MODES = {
    ClientAuth.NO_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
}

TLS_VERSIONS = {
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
OBSOLETE_TLS_VERSIONS = ("TLS10", "TLS11")  # known names, refused (RFC 8996)

# Mozilla "intermediate" TLS 1.2 suites (ssl-config.mozilla.org), ECDHE only.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

# Go's crypto/tls names (tls.CipherSuites(), TLS 1.0-1.2) -> OpenSSL names. TLS 1.3 suites are
# not configurable, in Go as here.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}

CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}


@dataclass(frozen=True)
class Pem:
    """PEM text given inline or read from a file (`path` set): where it came from, for messages."""

    key: str  # the config key, e.g. tls_server_config.cert_file
    data: bytes
    path: Path | None


@dataclass(frozen=True)
class TLSConfig:
    cert: Pem
    key: Pem = field(repr=False)
    client_auth_type: ClientAuth = ClientAuth.NO_CLIENT_CERT
    client_ca: Pem | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: tuple[str, ...] = INTERMEDIATE_CIPHERS  # OpenSSL names, for TLS 1.2
    prefer_server_cipher_suites: bool = True
    curve: str | None = None  # OpenSSL name

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context; raises TLSSetupError naming the key at fault."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = self.min_version
            ctx.maximum_version = self.max_version
        except ValueError as e:
            raise TLSSetupError(f"{TLS}.min_version", str(e)) from e
        with _pem_file(self.cert) as cert_path, _pem_file(self.key) as key_path:
            try:
                # A password callback returning nothing: an encrypted key fails, never prompts.
                ctx.load_cert_chain(cert_path, key_path, password=lambda: b"")
            except (ssl.SSLError, OSError) as e:
                raise TLSSetupError(
                    self.cert.key,
                    f"not a PEM certificate whose unencrypted private key is {self.key.key} "
                    f"({_reason(e)})",
                ) from e
        ctx.verify_mode = _VERIFY_MODES[self.client_auth_type]
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cadata=self.client_ca.data.decode("ascii"))
            except (ssl.SSLError, ValueError) as e:
                raise TLSSetupError(
                    self.client_ca.key, f"no PEM CA certificate ({_reason(e)})"
                ) from e
        try:
            ctx.set_ciphers(":".join(self.cipher_suites))
        except ssl.SSLError as e:
            raise TLSSetupError(
                f"{TLS}.cipher_suites", f"this OpenSSL offers none of them ({_reason(e)})"
            ) from e
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.curve is not None:
            try:
                ctx.set_ecdh_curve(self.curve)
            except (ssl.SSLError, ValueError) as e:
                # Debian 12's Python cannot set X25519 this way; a newer build can.
                raise TLSSetupError(
                    f"{TLS}.curve_preferences",
                    f"this Python's ssl module cannot use {self.curve} ({_reason(e)}); choose "
                    "CurveP256, CurveP384 or CurveP521, or leave curve_preferences out",
                ) from e
        return ctx

    def allows_peer(self, peer_cert: Mapping[str, Any] | None) -> bool:
        """client_allowed_sans: does the verified client certificate carry an allowed SAN?"""
        if not self.client_allowed_sans:
            return True
        if not peer_cert:
            return False
        allowed = {_normalise_san(s) for s in self.client_allowed_sans}
        return any(
            _normalise_san(value) in allowed for _, value in peer_cert.get("subjectAltName", ())
        )


def openssl_serves(version: ssl.TLSVersion) -> bool:
    """Whether this Python's OpenSSL can negotiate `version`: built in and not disabled.

    Asked of OpenSSL itself: a client context pinned to the version must produce a hello
    (OpenSSL's configuration, e.g. its MinProtocol or security level, can rule a version out).
    """
    if not getattr(ssl, f"HAS_{version.name}", False):
        return False
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.minimum_version = version
        context.maximum_version = version
        context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()).do_handshake()
    except ssl.SSLWantReadError:
        return True  # the hello went out; now it would wait for the server
    except (ssl.SSLError, ValueError):
        return False
    return False


@contextmanager
def _pem_file(pem: Pem) -> Iterator[str]:
    """A path `load_cert_chain` can read holding exactly the bytes checked at load."""
    fd = os.memfd_create("blockpull-exporter-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem.data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _normalise_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
