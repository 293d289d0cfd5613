"""The web config in force, reloaded when asked (SIGHUP) or when its files change on disk.

Certificates get rotated (certbot, an internal CA) without a restart, as with exporter-toolkit:
the web config file and every certificate, key and CA file it names are stat()ed at most once a
second from the accept loop, and a change loads the whole file again. A config that does not
load keeps the one in force (logged once per broken version of the files), so a half-written
certificate never takes the endpoint down. What a connection uses is one `ActiveWebConfig`,
taken when it is accepted: a reload never mixes two configs in one connection.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.web.auth import BasicAuth
from exporter.web.config import WebConfig, WebConfigError, load_web_config

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between looks at the files' metadata

# (path, mtime_ns, size, inode) per file; None where a file cannot be stat()ed.
FilesSignature = tuple[tuple[str, int, int, int] | tuple[str, None], ...]


@dataclass(frozen=True)
class ActiveWebConfig:
    config: WebConfig
    ssl_context: ssl.SSLContext | None  # None: plain HTTP
    auth: BasicAuth | None  # None: no basic auth

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"


def activate(config: WebConfig, previous: ActiveWebConfig | None = None) -> ActiveWebConfig:
    """The config ready to serve; raises WebConfigError when its TLS context cannot be built.

    The previous BasicAuth is kept when the users did not change: its cache of checked
    passwords (and its bcrypt gate) survive a certificate rotation."""
    users = config.basic_auth_users
    if previous is not None and previous.config.basic_auth_users == users:
        auth = previous.auth
    else:
        auth = BasicAuth(users) if users else None
    return ActiveWebConfig(config, config.ssl_context(), auth)


class LiveWebConfig:
    """The active web config, and where to load a new one from (`path`; None: never)."""

    def __init__(
        self, config: WebConfig, path: Path | None, monotonic: Callable[[], float]
    ) -> None:
        self.active = activate(config)
        self._path = path
        self._monotonic = monotonic
        self._requested = threading.Event()
        self._signature = self._files_signature(config)
        self._failed_signature: FilesSignature | None = None
        self._next_check = monotonic() + CHECK_INTERVAL

    def request_reload(self) -> None:
        """Reload at the next refresh whatever the files look like (SIGHUP; signal-safe)."""
        self._requested.set()

    def refresh(self) -> None:
        """Load the files again if asked to or if they changed; called from the accept loop."""
        if self._path is None:
            self._requested.clear()
            return
        requested = self._requested.is_set()
        now = self._monotonic()
        if not requested and now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        signature = self._files_signature(self.active.config)
        if not requested and signature in (self._signature, self._failed_signature):
            return
        self._requested.clear()
        self._load(signature)

    def _load(self, signature: FilesSignature) -> None:
        assert self._path is not None
        try:
            active = activate(load_web_config(self._path), self.active)
        except WebConfigError as error:
            if signature != self._failed_signature:
                log.error("web config reload failed, keeping the one in force: %s", error)
            self._failed_signature = signature
            return
        changed = active.config != self.active.config
        self.active = active
        self._signature = self._files_signature(active.config)
        self._failed_signature = None
        if changed:
            log.info("web config reloaded from %s (%s)", self._path, active.scheme)

    def _files_signature(self, config: WebConfig) -> FilesSignature:
        paths = [self._path] if self._path is not None else []
        tls = config.tls
        if tls is not None:
            pems = (tls.cert, tls.key, tls.client_ca)
            paths += [pem.path for pem in pems if pem is not None and pem.path is not None]
        return tuple(_stat(path) for path in paths)


def _stat(path: Path) -> tuple[str, int, int, int] | tuple[str, None]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
