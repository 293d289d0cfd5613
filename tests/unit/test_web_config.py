"""The web config file: what it accepts, and a message naming the key for every mistake."""

from __future__ import annotations

import shutil
import ssl
import textwrap
from pathlib import Path

import bcrypt
import pytest
from certs import Pki, handshake, make_pki

from exporter.web.config import WebConfigError, load_web_config
from exporter.web.tls import ClientAuth

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def conf_dir(tmp_path: Path, pki: Pki) -> Path:
    """A config directory holding copies of the PKI files, for relative paths."""
    for path in (pki.ca_cert, pki.server_cert, pki.server_key, pki.client_key):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "web.yml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}:")
    return message


TLS = """\
tls_server_config:
  cert_file: server.crt
  key_file: server.key
"""


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, ""))
    assert config.tls is None
    assert config.basic_auth_users == {}
    assert config.ssl_context() is None


def test_relative_paths_resolve_against_the_config_directory(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir("/")
    config = load_web_config(write(conf_dir, TLS))
    assert config.tls is not None
    assert config.tls.cert.path == conf_dir / "server.crt"


def test_full_config_builds_a_verifying_context(conf_dir: Path) -> None:
    config = load_web_config(
        write(
            conf_dir,
            f"""\
            tls_server_config:
              cert_file: server.crt
              key_file: server.key
              client_auth_type: RequireAndVerifyClientCert
              client_ca_file: ca.crt
              client_allowed_sans: [scraper.example]
              min_version: TLS13
              cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
              curve_preferences: [CurveP384]
            http_server_config:
              http2: false
              headers:
                X-Frame-Options: deny
                X-Content-Type-Options: nosniff
                Strict-Transport-Security: ""
            basic_auth_users:
              alice: "{HASH}"
            """,
        )
    )
    assert config.tls is not None
    assert config.tls.client_auth_type is ClientAuth.REQUIRE_AND_VERIFY_CLIENT_CERT
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.headers == (("X-Frame-Options", "deny"), ("X-Content-Type-Options", "nosniff"))
    assert config.basic_auth_users == {"alice": HASH.encode()}


def test_inline_certificate_and_key_are_accepted(tmp_path: Path, pki: Pki) -> None:
    cert = pki.server_cert.read_text().replace("\n", "\n    ")
    key = pki.server_key.read_text().replace("\n", "\n    ")
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config:\n  cert: |\n    {cert}\n  key: |\n    {key}\n")
    assert load_web_config(path).ssl_context() is not None


def test_client_allowed_sans_match_the_client_certificate_san(conf_dir: Path) -> None:
    config = load_web_config(
        write(
            conf_dir,
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: [scraper.example, 10.0.0.1]\n",
        )
    )
    assert config.tls is not None
    assert config.tls.allows_peer({"subjectAltName": (("DNS", "scraper.example"),)})
    assert config.tls.allows_peer({"subjectAltName": (("IP Address", "10.0.0.1"),)})
    assert not config.tls.allows_peer({"subjectAltName": (("DNS", "evil.example"),)})
    assert not config.tls.allows_peer(None)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    assert "cannot read" in error_of(tmp_path / "missing.yml")


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    assert "YAML syntax error" in error_of(write(tmp_path, "tls_server_config: [\n"))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping at the top level" in error_of(write(tmp_path, "- a\n"))


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    assert "tls_config: unknown key" in error_of(write(tmp_path, "tls_config: {}\n"))


def test_unknown_tls_key_is_named(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  certfile: x\n"))
    assert "tls_server_config.certfile: unknown key" in message


def test_key_file_without_cert_file_is_rejected(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, "tls_server_config:\n  key_file: server.key\n"))
    assert "tls_server_config.cert_file: missing" in message


def test_cert_file_without_key_file_is_rejected(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, "tls_server_config:\n  cert_file: server.crt\n"))
    assert "tls_server_config.key_file: missing" in message


def test_missing_certificate_file_is_named_with_its_path(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, TLS))
    assert f"tls_server_config.cert_file: {tmp_path / 'server.crt'}: cannot read" in message


def test_key_not_matching_the_certificate_is_rejected(conf_dir: Path) -> None:
    message = error_of(
        write(conf_dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n")
    )
    assert (
        "tls_server_config.cert_file: not a PEM certificate whose unencrypted private key is "
        "tls_server_config.key_file" in message
    )


def test_both_inline_and_file_certificate_is_rejected(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  cert: inline\n"))
    assert "tls_server_config.cert: give either cert or cert_file" in message


def test_unknown_client_auth_type_is_named(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  client_auth_type: Always\n"))
    assert 'tls_server_config.client_auth_type: unknown value "Always"' in message


@pytest.mark.parametrize("auth", ["RequireAnyClientCert", "RequestClientCert"])
def test_unverified_client_auth_types_are_refused_with_a_reason(conf_dir: Path, auth: str) -> None:
    message = error_of(
        write(conf_dir, TLS + f"  client_auth_type: {auth}\n  client_ca_file: ca.crt\n")
    )
    assert f"client_auth_type: {auth} is not supported" in message


@pytest.mark.parametrize("auth", ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"])
def test_verifying_auth_types_require_a_client_ca(conf_dir: Path, auth: str) -> None:
    message = error_of(write(conf_dir, TLS + f"  client_auth_type: {auth}\n"))
    assert f"tls_server_config.client_ca_file: required when client_auth_type is {auth}" in message


def test_client_ca_without_client_auth_is_rejected(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  client_ca_file: ca.crt\n"))
    assert "tls_server_config.client_ca_file: a client CA is set" in message


def test_client_ca_file_that_is_no_certificate_is_named(conf_dir: Path) -> None:
    message = error_of(
        write(
            conf_dir,
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: web.yml\n",
        )
    )
    assert "tls_server_config.client_ca_file: no PEM CA certificate" in message


def test_client_allowed_sans_need_verified_client_certificates(conf_dir: Path) -> None:
    message = error_of(
        write(
            conf_dir,
            TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
            "  client_allowed_sans: [scraper.example]\n",
        )
    )
    assert "tls_server_config.client_allowed_sans: needs client_auth_type" in message


def test_unknown_tls_version_is_named(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  min_version: TLS1.2\n"))
    assert 'tls_server_config.min_version: unknown value "TLS1.2"; did you mean "TLS12"?' in message


def test_min_version_above_max_version_is_rejected(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  min_version: TLS13\n  max_version: TLS12\n"))
    assert "tls_server_config.min_version: TLS13 is above max_version TLS12" in message


def test_unknown_cipher_suite_is_named(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n"))
    assert "tls_server_config.cipher_suites: unknown or insecure" in message


def test_several_curves_are_refused(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  curve_preferences: [X25519, CurveP256]\n"))
    assert "tls_server_config.curve_preferences: only one curve" in message


def test_prefer_server_cipher_suites_must_be_boolean(conf_dir: Path) -> None:
    message = error_of(write(conf_dir, TLS + "  prefer_server_cipher_suites: yes please\n"))
    assert "tls_server_config.prefer_server_cipher_suites: expected true or false" in message


def test_tls_options_without_certificate_are_rejected(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "tls_server_config:\n  min_version: TLS13\n"))
    assert "tls_server_config: min_version given without cert_file and key_file" in message


def test_header_outside_the_allowed_set_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "http_server_config:\n  headers:\n    Set-Cookie: a=b\n"))
    assert 'http_server_config.headers.Set-Cookie: unknown key "Set-Cookie"' in message


def test_header_value_outside_its_accepted_values_is_named(tmp_path: Path) -> None:
    message = error_of(
        write(tmp_path, "http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
    )
    assert "http_server_config.headers.X-Frame-Options: 'allow' is not one of" in message


def test_unknown_http_server_key_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "http_server_config:\n  http3: true\n"))
    assert "http_server_config.http3: unknown key" in message


def test_plain_password_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "basic_auth_users:\n  alice: secret\n"))
    assert "basic_auth_users.alice: not a bcrypt hash" in message


def test_non_string_user_name_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, f"basic_auth_users:\n  123: '{HASH}'\n"))
    assert (
        "basic_auth_users: expected a key (a string), but YAML reads the unquoted '123'" in message
    )


def test_rate_limit_is_reported_unsupported(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "rate_limit:\n  interval: 1s\n  burst: 5\n"))
    assert "rate_limit: not supported" in message


def test_every_mistake_is_reported_at_once_with_line_and_column(conf_dir: Path) -> None:
    path = write(
        conf_dir,
        """\
        tls_server_config:
          cert_file: server.crt
          key_file: server.key
          min_version: TLS1.2
          client_auth_type: Always
        http_server_config:
          http3: true
        basic_auth_users:
          alice: secret
        """,
    )
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert [(issue.line, issue.column, issue.yaml_path) for issue in caught.value.errors] == [
        (4, 16, "tls_server_config.min_version"),
        (5, 21, "tls_server_config.client_auth_type"),
        (7, 3, "http_server_config.http3"),
        (9, 10, "basic_auth_users.alice"),
    ]


def test_a_build_error_is_placed_at_the_key_at_fault(conf_dir: Path) -> None:
    path = write(conf_dir, "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n")
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    (issue,) = caught.value.errors
    assert (issue.line, issue.yaml_path) == (2, "tls_server_config.cert_file")


@pytest.mark.parametrize("name", ["TLS12", "TLS13"])
def test_each_version_accepted_at_load_completes_a_handshake(
    conf_dir: Path, pki: Pki, name: str
) -> None:
    config = load_web_config(
        write(conf_dir, TLS + f"  min_version: {name}\n  max_version: {name}\n")
    )
    server = config.ssl_context()
    assert server is not None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(pki.ca_cert)
    assert handshake(server, client).version() == f"TLSv1.{name[-1]}"


def test_a_version_this_openssl_cannot_serve_is_refused_naming_the_key(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssl, "HAS_TLSv1_3", False)  # as on an OpenSSL built without TLS 1.3
    message = error_of(write(conf_dir, TLS + "  max_version: TLS13\n"))
    assert "tls_server_config.max_version: TLS13 cannot be served by this machine's" in message
