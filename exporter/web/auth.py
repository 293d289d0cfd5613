"""HTTP basic auth against the web config's bcrypt hashes, with bcrypt's cost kept in bounds.

bcrypt is slow on purpose, which makes every failed guess expensive for the server too. So
checks are gated: one runs at a time (bcrypt releases the GIL: two would take both cores from
the scrapes), a few more may wait, and beyond those a check is refused at once
(`PasswordChecksBusyError`, answered 503) instead of holding a connection slot. Clients that
already passed are served from a cache without bcrypt, so a brute force neither slows them nor
locks them out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

_AUTH_CACHE_SIZE = 256  # successful (user, password) checks remembered
_RUNNING_CHECKS = 1  # bcrypt checks at once
_WAITING_CHECKS = 4  # bcrypt checks that may queue behind them; more are refused


class PasswordChecksBusyError(Exception):
    """Too many password checks are running or waiting: the client should retry shortly."""


class BasicAuth:
    """Checks credentials against bcrypt hashes, remembering recent successes.

    bcrypt costs ~100 ms on purpose; paying that on every scrape would be a waste, so a
    successful check is cached under an HMAC (random per-process key) of user, password and
    hash: the cache never holds a password, and a changed hash misses it. Bounded, LRU.
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        cache_size: int = _AUTH_CACHE_SIZE,
        running_checks: int = _RUNNING_CHECKS,
        waiting_checks: int = _WAITING_CHECKS,
    ) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._admitted = threading.BoundedSemaphore(running_checks + waiting_checks)
        self._running = threading.BoundedSemaphore(running_checks)
        # Unknown users are checked against this, at the highest cost of the configured users,
        # so that timing tells no unknown user from a known one with the slowest hash.
        cost = max(map(bcrypt_cost, users.values()), default=4)  # no users: nothing to hide
        self._dummy_hash = bcrypt.hashpw(secrets.token_hex(16).encode(), bcrypt.gensalt(cost))

    def check(self, user: str, password: str) -> bool:
        """Whether the password is the user's; PasswordChecksBusyError if bcrypt is saturated."""
        hashed = self._users.get(user)
        token = hmac.new(
            self._key,
            b"\0".join((user.encode(), password.encode(), hashed or b"")),
            hashlib.sha256,
        ).digest()
        if hashed is not None:
            with self._lock:
                if token in self._cache:
                    self._cache.move_to_end(token)
                    return True
        ok = self._bcrypt_check(password.encode(), hashed or self._dummy_hash)
        if not ok or hashed is None:
            return False
        with self._lock:
            self._cache[token] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True

    def _bcrypt_check(self, password: bytes, hashed: bytes) -> bool:
        if not self._admitted.acquire(blocking=False):
            raise PasswordChecksBusyError
        try:
            with self._running:
                return bcrypt.checkpw(password, hashed)
        except ValueError:  # longer than bcrypt's 72 bytes, or a NUL: cannot match
            return False
        finally:
            self._admitted.release()

    @property
    def cached(self) -> int:
        return len(self._cache)


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a `$2b$12$...` hash."""
    return int(hashed.split(b"$")[2])


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header; None if absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
