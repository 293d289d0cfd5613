"""HTTP basic auth against the web config's bcrypt hashes."""

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
# A valid hash for unknown users, so they cost the same bcrypt time as known ones.
_DUMMY_HASH = b"$2b$10$ajmdrwn2Rwve/pl6/mR4cuHmCvEIH7PtKsJumGZrdYkJc2oxebRde"


class BasicAuth:
    """Checks credentials against bcrypt hashes, remembering recent successes.

    bcrypt costs ~100 ms on purpose; paying that on every scrape would be a waste, so a
    successful check is cached under an HMAC (random per-process key) of user, password and
    hash: the cache never holds a password, and a changed hash misses it. Bounded, LRU.
    """

    def __init__(self, users: Mapping[str, bytes], cache_size: int = _AUTH_CACHE_SIZE) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
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
        try:
            ok = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH)
        except ValueError:  # longer than bcrypt's 72 bytes, or a NUL: cannot match
            ok = False
        if not ok or hashed is None:
            return False
        with self._lock:
            self._cache[token] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True

    @property
    def cached(self) -> int:
        return len(self._cache)


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
