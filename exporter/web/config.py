"""The exporter-toolkit web configuration file (`--web.config.file`): TLS, headers, basic auth.

Same format as every Prometheus exporter (docs/web-configuration.md in
prometheus/exporter-toolkit), so operators reuse the files they already deploy. Validated once
at load: every mistake is a `WebConfigError` naming the file and the key. Relative paths resolve
against the file's directory.

Differences from the Go toolkit, each rejected with a message rather than silently changed:
- `client_auth_type` RequestClientCert and RequireAnyClientCert: Python's ssl module cannot ask
  for a client certificate without verifying it.
- `curve_preferences` takes one curve (Python's ssl sets a single ECDH curve).
- `rate_limit` is not supported.
`http_server_config.http2` is accepted and ignored: the endpoint serves HTTP/1.1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml


class WebConfigError(ValueError):
    """An invalid web configuration; the message names the file and the key."""


class ClientAuth(StrEnum):
    NO_CLIENT_CERT = "NoClientCert"
    REQUEST_CLIENT_CERT = "RequestClientCert"
    REQUIRE_ANY_CLIENT_CERT = "RequireAnyClientCert"
    VERIFY_CLIENT_CERT_IF_GIVEN = "VerifyClientCertIfGiven"
    REQUIRE_AND_VERIFY_CLIENT_CERT = "RequireAndVerifyClientCert"


_UNSUPPORTED_CLIENT_AUTH = {
    ClientAuth.REQUEST_CLIENT_CERT,
    ClientAuth.REQUIRE_ANY_CLIENT_CERT,
}
_VERIFY_MODES = {
    ClientAuth.NO_CLIENT_CERT: ssl.CERT_NONE,
    ClientAuth.VERIFY_CLIENT_CERT_IF_GIVEN: ssl.CERT_OPTIONAL,
    ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT: ssl.CERT_REQUIRED,
}

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's crypto/tls names (tls.CipherSuites(), TLS 1.0-1.2) -> OpenSSL names. TLS 1.3 suites are
# not configurable, in Go as here.
_CIPHER_SUITES = {
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

_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}

# Headers the toolkit lets a config set, with the values it accepts (None = any).
_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

_BCRYPT = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"}
_TLS_KEYS = {
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
}
_HTTP_KEYS = {"http2", "headers"}


@dataclass(frozen=True)
class Pem:
    """PEM text given inline or as a file (`path` set): where it came from, for messages."""

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
    cipher_suites: tuple[str, ...] = ()  # OpenSSL names; () = OpenSSL's defaults
    prefer_server_cipher_suites: bool = True
    curve: str | None = None  # OpenSSL name

    def ssl_context(self, source: str = "web config") -> ssl.SSLContext:
        """A server-side context; raises WebConfigError naming the key at fault."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = self.min_version
            ctx.maximum_version = self.max_version
        except ValueError as e:
            raise WebConfigError(f"{source}: tls_server_config.min_version: {e}") from e
        with _pem_file(self.cert) as cert_path, _pem_file(self.key) as key_path:
            try:
                # A password callback returning nothing: an encrypted key fails, never prompts.
                ctx.load_cert_chain(cert_path, key_path, password=lambda: b"")
            except (ssl.SSLError, OSError) as e:
                raise WebConfigError(
                    f"{source}: {self.cert.key} / {self.key.key}: not a PEM certificate and "
                    f"its unencrypted private key ({_reason(e)})"
                ) from e
        ctx.verify_mode = _VERIFY_MODES[self.client_auth_type]
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cadata=self.client_ca.data.decode("ascii"))
            except (ssl.SSLError, ValueError) as e:
                raise WebConfigError(
                    f"{source}: {self.client_ca.key}: no PEM CA certificate ({_reason(e)})"
                ) from e
        if self.cipher_suites:
            ctx.set_ciphers(":".join(self.cipher_suites))
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.curve is not None:
            try:
                ctx.set_ecdh_curve(self.curve)
            except (ssl.SSLError, ValueError) as e:
                # Debian 12's Python cannot set X25519 this way; a newer build can.
                raise WebConfigError(
                    f"{source}: tls_server_config.curve_preferences: this Python's ssl module "
                    f"cannot use {self.curve} ({_reason(e)}); choose CurveP256, CurveP384 or "
                    "CurveP521, or leave curve_preferences out"
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


@dataclass(frozen=True)
class WebConfig:
    source: str  # the file, for messages
    tls: TLSConfig | None = None  # None: plain HTTP
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: dict[str, bytes] = field(default_factory=dict, repr=False)  # bcrypt

    def ssl_context(self) -> ssl.SSLContext | None:
        return None if self.tls is None else self.tls.ssl_context(self.source)


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, validate and (for TLS) trial-build the SSL context of a web config file."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WebConfigError(f"{source}: cannot read: {_reason(e)}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WebConfigError(f"{source}: not valid YAML: {e}") from e
    config = parse_web_config(data, source=str(source), base_dir=source.parent)
    config.ssl_context()  # certificate/key mismatches surface now, not at the first scrape
    return config


def parse_web_config(data: object, *, source: str, base_dir: Path) -> WebConfig:
    """Validate parsed YAML; reads the files it names (relative to `base_dir`)."""
    if data is None:
        return WebConfig(source=source)
    root = _mapping(data, source, "")
    _known_keys(root, _TOP_KEYS, source, "")
    if "rate_limit" in root:
        raise WebConfigError(f"{source}: rate_limit: not supported by blockpull-exporter")
    tls = None
    if root.get("tls_server_config") is not None:
        tls = _parse_tls(
            _mapping(root["tls_server_config"], source, "tls_server_config"), source, base_dir
        )
    headers: tuple[tuple[str, str], ...] = ()
    if root.get("http_server_config") is not None:
        headers = _parse_http(
            _mapping(root["http_server_config"], source, "http_server_config"), source
        )
    users = {}
    if root.get("basic_auth_users") is not None:
        users = _parse_users(_mapping(root["basic_auth_users"], source, "basic_auth_users"), source)
    return WebConfig(source=source, tls=tls, headers=headers, basic_auth_users=users)


def _parse_tls(raw: dict[str, Any], source: str, base_dir: Path) -> TLSConfig | None:
    prefix = "tls_server_config."
    _known_keys(raw, _TLS_KEYS, source, prefix)
    cert = _pem(raw, "cert", "cert_file", source, base_dir)
    key = _pem(raw, "key", "key_file", source, base_dir)
    client_ca = _pem(raw, "client_ca", "client_ca_file", source, base_dir)
    if cert is None and key is None:
        extra = sorted(k for k in raw if raw[k] is not None)
        if extra:
            raise WebConfigError(
                f"{source}: tls_server_config: {', '.join(extra)} given without cert_file and "
                "key_file"
            )
        return None  # an empty section: plain HTTP, as in the toolkit
    if cert is None:
        raise WebConfigError(f"{source}: tls_server_config.cert_file: missing (key_file is set)")
    if key is None:
        raise WebConfigError(f"{source}: tls_server_config.key_file: missing (cert_file is set)")

    auth_text = _string(
        raw.get("client_auth_type", "NoClientCert"), source, prefix + "client_auth_type"
    )
    try:
        auth = ClientAuth(auth_text)
    except ValueError:
        raise WebConfigError(
            f"{source}: tls_server_config.client_auth_type: {auth_text!r} is not one of "
            f"{', '.join(a.value for a in ClientAuth)}"
        ) from None
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        raise WebConfigError(
            f"{source}: tls_server_config.client_auth_type: {auth} is not supported (Python's "
            "ssl cannot accept an unverified client certificate); use "
            "RequireAndVerifyClientCert"
        )
    if auth is ClientAuth.NO_CLIENT_CERT and client_ca is not None:
        raise WebConfigError(
            f"{source}: {client_ca.key}: a client CA is set but client_auth_type is "
            "NoClientCert; set client_auth_type: RequireAndVerifyClientCert"
        )
    if auth is not ClientAuth.NO_CLIENT_CERT and client_ca is None:
        raise WebConfigError(
            f"{source}: tls_server_config.client_ca_file: required when client_auth_type is {auth}"
        )
    sans = _string_list(raw.get("client_allowed_sans"), source, prefix + "client_allowed_sans")
    if sans and auth is not ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT:
        raise WebConfigError(
            f"{source}: tls_server_config.client_allowed_sans: needs client_auth_type "
            "RequireAndVerifyClientCert (otherwise a client may send no certificate)"
        )
    min_version = _tls_version(raw.get("min_version", "TLS12"), source, prefix + "min_version")
    max_version = _tls_version(raw.get("max_version", "TLS13"), source, prefix + "max_version")
    if min_version > max_version:
        raise WebConfigError(
            f"{source}: tls_server_config.min_version: {raw.get('min_version')} is above "
            f"max_version {raw.get('max_version', 'TLS13')}"
        )
    ciphers = []
    for name in _string_list(raw.get("cipher_suites"), source, prefix + "cipher_suites"):
        if name not in _CIPHER_SUITES:
            raise WebConfigError(
                f"{source}: tls_server_config.cipher_suites: unknown or insecure cipher suite "
                f"{name!r}; known: {', '.join(sorted(_CIPHER_SUITES))}"
            )
        ciphers.append(_CIPHER_SUITES[name])
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise WebConfigError(
            f"{source}: tls_server_config.prefer_server_cipher_suites: expected true or false, "
            f"got {prefer!r}"
        )
    curves = _string_list(raw.get("curve_preferences"), source, prefix + "curve_preferences")
    for name in curves:
        if name not in _CURVES:
            raise WebConfigError(
                f"{source}: tls_server_config.curve_preferences: unknown curve {name!r}; known: "
                f"{', '.join(_CURVES)}"
            )
    if len(curves) > 1:
        raise WebConfigError(
            f"{source}: tls_server_config.curve_preferences: only one curve is supported "
            f"(Python's ssl sets a single ECDH curve), got {len(curves)}"
        )
    return TLSConfig(
        cert=cert,
        key=key,
        client_auth_type=auth,
        client_ca=client_ca,
        client_allowed_sans=tuple(sans),
        min_version=min_version,
        max_version=max_version,
        cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=prefer,
        curve=_CURVES[curves[0]] if curves else None,
    )


def _parse_http(raw: dict[str, Any], source: str) -> tuple[tuple[str, str], ...]:
    _known_keys(raw, _HTTP_KEYS, source, "http_server_config.")
    http2 = raw.get("http2", True)
    if not isinstance(http2, bool):
        raise WebConfigError(
            f"{source}: http_server_config.http2: expected true or false, got {http2!r}"
        )
    if raw.get("headers") is None:
        return ()
    headers = _mapping(raw["headers"], source, "http_server_config.headers")
    result = []
    for name, value in headers.items():
        key = f"http_server_config.headers.{name}"
        if name not in _HEADERS:
            raise WebConfigError(
                f"{source}: {key}: this header cannot be set; allowed: {', '.join(_HEADERS)}"
            )
        if value is None or value == "":
            continue  # blank: unset, as documented
        text = _string(value, source, key)
        if "\r" in text or "\n" in text:
            raise WebConfigError(f"{source}: {key}: a header value cannot contain a line break")
        accepted = _HEADERS[name]
        if accepted is not None and text.lower() not in accepted:
            raise WebConfigError(
                f"{source}: {key}: {text!r} is not one of {', '.join(sorted(accepted))}"
            )
        result.append((name, text))
    return tuple(result)


def _parse_users(raw: dict[Any, Any], source: str) -> dict[str, bytes]:
    users = {}
    for user, hashed in raw.items():
        if not isinstance(user, str) or not user:
            raise WebConfigError(
                f"{source}: basic_auth_users: user name {user!r} must be a non-empty string "
                "(quote it)"
            )
        if ":" in user:
            raise WebConfigError(
                f"{source}: basic_auth_users.{user}: a user name cannot contain ':'"
            )
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise WebConfigError(
                f"{source}: basic_auth_users.{user}: not a bcrypt hash (expected "
                '$2y$10$ followed by 53 characters, e.g. from `htpasswd -nBC 10 ""`); '
                "never put a plain password here"
            )
        users[user] = hashed.encode("ascii")
    return users


def _pem(
    raw: dict[str, Any], inline_key: str, file_key: str, source: str, base_dir: Path
) -> Pem | None:
    inline, path_text = raw.get(inline_key), raw.get(file_key)
    if inline is not None and path_text is not None:
        raise WebConfigError(
            f"{source}: tls_server_config.{inline_key}: give either {inline_key} or {file_key}, "
            "not both"
        )
    if inline is not None:
        key = f"tls_server_config.{inline_key}"
        return Pem(key=key, data=_string(inline, source, key).encode("utf-8"), path=None)
    if path_text is None or path_text == "":
        return None
    key = f"tls_server_config.{file_key}"
    path = base_dir / _string(path_text, source, key)
    try:
        return Pem(key=key, data=path.read_bytes(), path=path)
    except OSError as e:
        raise WebConfigError(f"{source}: {key}: cannot read {path}: {_reason(e)}") from e


@contextmanager
def _pem_file(pem: Pem) -> Iterator[str]:
    """A path `load_cert_chain` can read; inline PEM goes through an anonymous memory file."""
    if pem.path is not None:
        yield str(pem.path)
        return
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


def _mapping(value: object, source: str, key: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        where = key or "the top level"
        raise WebConfigError(f"{source}: {where}: expected a mapping, got {_kind(value)}")
    return value


def _known_keys(raw: dict[Any, Any], known: set[str], source: str, prefix: str) -> None:
    for name in raw:
        if name not in known:
            raise WebConfigError(
                f"{source}: {prefix}{name}: unknown key; known keys: {', '.join(sorted(known))}"
            )


def _string(value: object, source: str, key: str) -> str:
    if not isinstance(value, str):
        raise WebConfigError(f"{source}: {key}: expected a string, got {_kind(value)}")
    return value


def _string_list(value: object, source: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise WebConfigError(f"{source}: {key}: expected a list of strings, got {_kind(value)}")
    return [_string(item, source, key) for item in value]


def _tls_version(value: object, source: str, key: str) -> ssl.TLSVersion:
    text = _string(value, source, key)
    if text not in _TLS_VERSIONS:
        raise WebConfigError(f"{source}: {key}: {text!r} is not one of {', '.join(_TLS_VERSIONS)}")
    return _TLS_VERSIONS[text]


def _kind(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
