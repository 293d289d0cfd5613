"""The exporter-toolkit web configuration file (`--web.config.file`): TLS, headers, basic auth.

Same format as every Prometheus exporter (docs/web-configuration.md in
prometheus/exporter-toolkit), so operators reuse the files they already deploy. Validated once
at load by the shared checker (exporter.config_file): every mistake is reported at once, each
with file, line, column and YAML path, in a `WebConfigError`. Relative paths resolve against the
file's directory; the certificate, key and CA files are read once, with the same care as the
config file itself, and the TLS context is built from those bytes.

TLS follows Mozilla's "intermediate" profile (see exporter.web.tls); a `min_version` or
`max_version` this machine's OpenSSL cannot serve is refused at load rather than failing every
handshake later.

Differences from the Go toolkit, each rejected with a message rather than silently changed:
- `client_auth_type` RequestClientCert and RequireAnyClientCert: Python's ssl module cannot ask
  for a client certificate without verifying it.
- `curve_preferences` takes one curve (Python's ssl sets a single ECDH curve).
- `min_version`/`max_version` TLS10 and TLS11.
- `rate_limit` is not supported.
`http_server_config.http2` is accepted and ignored: the endpoint serves HTTP/1.1.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node

from exporter.config_file.checker import STR, Checker, Fields, describe, is_null, join
from exporter.config_file.issues import ConfigError, Issue
from exporter.config_file.reading import UnreadableFileError, read_config_file
from exporter.web.tls import (
    CIPHER_SUITES,
    CURVES,
    INTERMEDIATE_CIPHERS,
    OBSOLETE_TLS_VERSIONS,
    TLS,
    TLS_VERSIONS,
    UNSUPPORTED_CLIENT_AUTH,
    ClientAuth,
    Pem,
    TLSConfig,
    TLSSetupError,
    openssl_serves,
)


class WebConfigError(ConfigError):
    """The issues found in one web config file, in file order (at most a few dozen shown)."""


# Headers the toolkit lets a config set, with the values it accepts (None = any).
_HEADERS: dict[str, frozenset[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

_BCRYPT = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
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
)
_HTTP_KEYS = ("http2", "headers")


@dataclass(frozen=True)
class WebConfig:
    source: str  # the file, for messages
    tls: TLSConfig | None = None  # None: plain HTTP
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: dict[str, bytes] = field(default_factory=dict, repr=False)  # bcrypt

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context, or None for plain HTTP; raises WebConfigError naming the key."""
        if self.tls is None:
            return None
        try:
            return self.tls.ssl_context()
        except TLSSetupError as error:
            raise WebConfigError((Issue(self.source, 0, 0, error.key, error.message),)) from None


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and validate a web config file, trial-building its TLS context."""
    source = Path(path)
    try:
        data = read_config_file(source)
    except UnreadableFileError as error:
        raise WebConfigError.unpositioned(str(source), str(error)) from None
    return parse_web_config(data, source=str(source), base_dir=source.parent)


def parse_web_config(data: str | bytes, *, source: str, base_dir: Path) -> WebConfig:
    """Validate a web config's text; reads the files it names (relative to `base_dir`)."""
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogatepass")
    checker = _WebConfigChecker(source, base_dir=base_dir)
    root = checker.document(data)
    config = WebConfig(source=source) if root is None else checker.config(root)
    if checker.issues or config is None:
        raise checker.issues.error(WebConfigError)
    return config


@dataclass
class _WebConfigChecker(Checker):
    """The web config's sections on top of the generic checks; None where a value is wrong."""

    base_dir: Path = Path()

    def config(self, root: Node) -> WebConfig | None:
        fields = self.mapping(root, "", _TOP_KEYS)
        if fields is None:
            return None
        if "rate_limit" in fields:
            self.at(fields["rate_limit"][0], "rate_limit", "not supported by blockpull-exporter")
        tls = users = None
        headers: tuple[tuple[str, str], ...] | None = ()
        if _given(fields, TLS):
            tls = self.tls(fields[TLS][1])
        if _given(fields, "http_server_config"):
            headers = self.http(fields["http_server_config"][1])
        if _given(fields, "basic_auth_users"):
            users = self.users(fields["basic_auth_users"][1])
        if headers is None:
            return None
        return WebConfig(self.source, tls, headers, users or {})

    # -- tls_server_config --------------------------------------------------------------

    def tls(self, node: Node) -> TLSConfig | None:
        fields = self.mapping(node, TLS, _TLS_KEYS)
        if fields is None:
            return None
        given = sorted(key for key in fields if _given(fields, key))
        has_cert = bool({"cert", "cert_file"} & set(given))
        has_key = bool({"key", "key_file"} & set(given))
        if not has_cert and not has_key:
            if given:
                self.at(node, TLS, f"{', '.join(given)} given without cert_file and key_file")
            return None  # an empty section: plain HTTP, as in the toolkit
        if not has_cert:
            self.at(node, f"{TLS}.cert_file", "missing (key_file is set)")
        if not has_key:
            self.at(node, f"{TLS}.key_file", "missing (cert_file is set)")
        issues_before = self.issues.count
        cert = self.pem(fields, "cert", "cert_file")
        key = self.pem(fields, "key", "key_file")
        client_ca = self.pem(fields, "client_ca", "client_ca_file")
        auth = self.client_auth(fields, client_ca)
        sans = self.allowed_sans(fields, auth)
        versions = self.versions(fields)
        ciphers = self.ciphers(fields)
        prefer = True
        if "prefer_server_cipher_suites" in fields:
            value = fields["prefer_server_cipher_suites"][1]
            prefer = bool(self.boolean(value, f"{TLS}.prefer_server_cipher_suites"))
        curve = self.curve(fields)
        if self.issues.count > issues_before or cert is None or key is None:
            return None
        assert auth is not None and sans is not None and versions is not None
        config = TLSConfig(
            cert=cert,
            key=key,
            client_auth_type=auth,
            client_ca=client_ca,
            client_allowed_sans=sans,
            min_version=versions[0],
            max_version=versions[1],
            cipher_suites=ciphers or INTERMEDIATE_CIPHERS,
            prefer_server_cipher_suites=prefer,
            curve=curve,
        )
        try:
            config.ssl_context()  # mismatched files surface now, not at the first scrape
        except TLSSetupError as error:
            nodes = {join(TLS, name): value for name, (_, value) in fields.items()}
            self.at(nodes.get(error.key, node), error.key, error.message)
            return None
        return config

    def pem(self, fields: Fields, inline_key: str, file_key: str) -> Pem | None:
        inline, file = _given(fields, inline_key), _given(fields, file_key)
        if inline and file:
            self.at(
                fields[inline_key][0],
                f"{TLS}.{inline_key}",
                f"give either {inline_key} or {file_key}, not both",
            )
            return None
        if inline:
            key = f"{TLS}.{inline_key}"
            text = self.string(fields[inline_key][1], key, "PEM text")
            return None if text is None else Pem(key, text.encode("utf-8"), None)
        if not file:
            return None
        key = f"{TLS}.{file_key}"
        name = self.string(fields[file_key][1], key, "a file name")
        if name is None:
            return None
        path = self.base_dir / name
        try:
            return Pem(key, read_config_file(path), path)
        except UnreadableFileError as error:
            self.at(fields[file_key][1], key, f"{path}: {error}")
            return None

    def client_auth(self, fields: Fields, client_ca: Pem | None) -> ClientAuth | None:
        path = f"{TLS}.client_auth_type"
        auth = ClientAuth.NO_CLIENT_CERT
        if "client_auth_type" in fields:
            node = fields["client_auth_type"][1]
            text = self.choice(node, path, tuple(auth.value for auth in ClientAuth))
            if text is None:
                return None
            auth = ClientAuth(text)
            if auth in UNSUPPORTED_CLIENT_AUTH:
                self.at(
                    node,
                    path,
                    f"{auth} is not supported (Python's ssl cannot accept an unverified client "
                    "certificate); use RequireAndVerifyClientCert",
                )
                return None
        has_ca = _given(fields, "client_ca") or _given(fields, "client_ca_file")
        if auth is ClientAuth.NO_CLIENT_CERT and has_ca:
            ca_key = "client_ca" if _given(fields, "client_ca") else "client_ca_file"
            self.at(
                fields[ca_key][0],
                f"{TLS}.{ca_key}",
                "a client CA is set but client_auth_type is NoClientCert; set "
                "client_auth_type: RequireAndVerifyClientCert",
            )
        elif auth is not ClientAuth.NO_CLIENT_CERT and not has_ca:
            self.at(
                fields["client_auth_type"][1],
                f"{TLS}.client_ca_file",
                f"required when client_auth_type is {auth}",
            )
        return auth

    def allowed_sans(self, fields: Fields, auth: ClientAuth | None) -> tuple[str, ...] | None:
        if "client_allowed_sans" not in fields:
            return ()
        path = f"{TLS}.client_allowed_sans"
        node = fields["client_allowed_sans"][1]
        sans = self.strings(node, path, "subject alternative names")
        if sans and auth not in (None, ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT):
            self.at(
                node,
                path,
                "needs client_auth_type RequireAndVerifyClientCert (otherwise a client may send "
                "no certificate)",
            )
        return sans

    def versions(self, fields: Fields) -> tuple[ssl.TLSVersion, ssl.TLSVersion] | None:
        lowest = highest = None
        if "min_version" in fields:
            lowest = self.tls_version(fields["min_version"][1], f"{TLS}.min_version")
        if "max_version" in fields:
            highest = self.tls_version(fields["max_version"][1], f"{TLS}.max_version")
        if ("min_version" in fields and lowest is None) or (
            "max_version" in fields and highest is None
        ):
            return None
        lowest = lowest or ssl.TLSVersion.TLSv1_2
        highest = highest or ssl.TLSVersion.TLSv1_3
        if lowest > highest:
            self.at(
                fields["min_version"][1],
                f"{TLS}.min_version",
                f"{_name(lowest)} is above max_version {_name(highest)}",
            )
            return None
        return lowest, highest

    def tls_version(self, node: Node, path: str) -> ssl.TLSVersion | None:
        text = self.choice(node, path, (*OBSOLETE_TLS_VERSIONS, *TLS_VERSIONS))
        if text is None:
            return None
        if text in OBSOLETE_TLS_VERSIONS:
            self.at(
                node,
                path,
                f"{text} is refused: TLS 1.0 and 1.1 are obsolete (RFC 8996) and OpenSSL no "
                "longer completes their handshakes by default; use TLS12 or TLS13",
            )
            return None
        version = TLS_VERSIONS[text]
        if not openssl_serves(version):
            self.at(
                node,
                path,
                f"{text} cannot be served by this machine's {ssl.OPENSSL_VERSION} (not built "
                "in, or disabled by its configuration)",
            )
            return None
        return version

    def ciphers(self, fields: Fields) -> tuple[str, ...] | None:
        if "cipher_suites" not in fields:
            return ()
        path = f"{TLS}.cipher_suites"
        names = self.strings(fields["cipher_suites"][1], path, "cipher suite names")
        if names is None:
            return None
        unknown = [name for name in names if name not in CIPHER_SUITES]
        if unknown:
            self.at(
                fields["cipher_suites"][1],
                path,
                f"unknown or insecure cipher suite {unknown[0]!r}; known: "
                f"{', '.join(sorted(CIPHER_SUITES))}",
            )
            return None
        return tuple(CIPHER_SUITES[name] for name in names)

    def curve(self, fields: Fields) -> str | None:
        if "curve_preferences" not in fields:
            return None
        path = f"{TLS}.curve_preferences"
        node = fields["curve_preferences"][1]
        names = self.strings(node, path, "curve names")
        if not names:
            return None
        unknown = [name for name in names if name not in CURVES]
        if unknown:
            self.at(
                node,
                path,
                f"unknown curve {unknown[0]!r}; known: {', '.join(CURVES)}",
            )
            return None
        if len(names) > 1:
            self.at(
                node,
                path,
                f"only one curve is supported (Python's ssl sets a single ECDH curve), got "
                f"{len(names)}",
            )
            return None
        return CURVES[names[0]]

    # -- http_server_config and basic_auth_users ----------------------------------------

    def http(self, node: Node) -> tuple[tuple[str, str], ...] | None:
        path = "http_server_config"
        fields = self.mapping(node, path, _HTTP_KEYS)
        if fields is None:
            return None
        if "http2" in fields:
            self.boolean(fields["http2"][1], f"{path}.http2")  # accepted and ignored
        if not _given(fields, "headers"):
            return ()
        headers = self.mapping(fields["headers"][1], f"{path}.headers", tuple(_HEADERS))
        if headers is None:
            return None
        result = []
        for name, (_, value_node) in headers.items():
            key = f"{path}.headers.{name}"
            if not _given(headers, name):
                continue  # blank: unset, as documented
            text = self.string(value_node, key)
            if text is None:
                continue
            accepted = _HEADERS[name]
            if "\r" in text or "\n" in text:
                self.at(value_node, key, "a header value cannot contain a line break")
            elif accepted is not None and text.lower() not in accepted:
                self.at(value_node, key, f"{text!r} is not one of {', '.join(sorted(accepted))}")
            else:
                result.append((name, text))
        return tuple(result)

    def users(self, node: Node) -> dict[str, bytes] | None:
        path = "basic_auth_users"
        if not isinstance(node, MappingNode):
            self.at(node, path, f"expected a mapping of user names to hashes, got {describe(node)}")
            return None
        users = {}
        for user, (_, hash_node) in self.entries(node, path, None).items():
            key = join(path, user)
            if ":" in user:
                self.at(hash_node, key, "a user name cannot contain ':'")
                continue
            hashed = self.string(hash_node, key, "a bcrypt hash")
            if hashed is None:
                continue
            if not _BCRYPT.match(hashed):
                self.at(
                    hash_node,
                    key,
                    "not a bcrypt hash (expected $2y$10$ followed by 53 characters, e.g. from "
                    '`htpasswd -nBC 10 ""`); never put a plain password here',
                )
                continue
            users[user] = hashed.encode("ascii")
        return users


def _given(fields: Fields, key: str) -> bool:
    """The key is present with a value: nothing (null) and "" count as absent, as in Go."""
    if key not in fields:
        return False
    node = fields[key][1]
    return not (is_null(node) or (node.tag == STR and node.value == ""))


def _name(version: ssl.TLSVersion) -> str:
    return next(name for name, value in TLS_VERSIONS.items() if value == version)
