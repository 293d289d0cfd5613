"""Basic auth: the endpoint's 401s and the bcrypt checks behind them."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest
from live_server import BODY, PASSWORD_HASH, basic, request, serving, write_config

from exporter.web import auth as web_auth
from exporter.web.auth import BasicAuth
from exporter.web.config import WebConfig


@pytest.fixture
def auth_config(tmp_path: Path) -> WebConfig:
    return write_config(tmp_path, f"basic_auth_users:\n  alice: '{PASSWORD_HASH.decode()}'\n")


def test_missing_credentials_get_401_with_a_challenge(auth_config: WebConfig) -> None:
    with serving(auth_config) as server:
        status, headers, _ = request(server)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="blockpull-exporter"')


@pytest.mark.parametrize(
    "headers",
    [
        basic("alice", "wrong"),
        basic("bob", "s3cret"),
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ],
    ids=["wrong-password", "unknown-user", "other-scheme", "bad-base64", "no-colon"],
)
def test_bad_credentials_get_401(auth_config: WebConfig, headers: dict[str, str]) -> None:
    with serving(auth_config) as server:
        assert request(server, headers=headers)[0] == 401


def test_good_credentials_get_the_metrics(auth_config: WebConfig) -> None:
    with serving(auth_config) as server:
        assert request(server, headers=basic("alice", "s3cret"))[:3:2] == (200, BODY)


def test_auth_is_checked_before_routing(auth_config: WebConfig) -> None:
    with serving(auth_config) as server:
        assert request(server, "POST")[0] == 401
        assert request(server, path="/nope")[0] == 401


def test_successful_check_is_cached_so_bcrypt_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = web_auth.bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(web_auth.bcrypt, "checkpw", counting)
    auth = BasicAuth({"alice": PASSWORD_HASH})
    assert auth.check("alice", "s3cret")
    assert auth.check("alice", "s3cret")
    assert len(calls) == 1


def test_failed_checks_are_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = BasicAuth({"alice": PASSWORD_HASH})
    assert not auth.check("alice", "wrong")
    assert not auth.check("alice", "wrong")
    assert auth.cached == 0


def test_auth_cache_stays_bounded() -> None:
    hashes = {f"user{i}": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) for i in range(5)}
    auth = BasicAuth(hashes, cache_size=2)
    for user in hashes:
        assert auth.check(user, "pw")
    assert auth.cached == 2


def test_overlong_password_is_refused_not_crashed() -> None:
    auth = BasicAuth({"alice": PASSWORD_HASH})
    assert not auth.check("alice", "x" * 200)
