"""The holds file, `<state.dir>/holds/holds.json`: written by `hold`/`release`, read by the daemon.

Who may do what. The daemon runs as its own user and owns its 0700 state directory; `hold` is
usually run by root. Root writes into that directory anyway, and gives what it creates to the
directory's owner, so the daemon can read it whatever root's umask is. The daemon only ever
reads. Writers take an flock on `holds/.lock`, read, change, and replace the file atomically
(a temporary file, fsync, rename), so a reader sees the old file or the new one, never half of
one; expired holds are dropped on the way. Every file operation is relative to the opened holds
directory and follows no symlink: the directory belongs to the daemon's user, and root must not
be tricked into writing somewhere else through it.

The file is checked like any input from outside: at most MAX_FILE_BYTES, a JSON document of
FORMAT_VERSION with at most MAX_HOLDS holds; a hold longer than MAX_HOLD_SECONDS is cut to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from exporter.core.holds import Hold, HoldSet

FORMAT_VERSION = 1
log = logging.getLogger(__name__)
HOLDS_DIR = "holds"
HOLDS_FILE = "holds.json"
LOCK_FILE = ".lock"
MAX_FILE_BYTES = 1024 * 1024
MAX_HOLDS = 1000
MAX_TEXT = 1024  # characters of a glob, a reason or a user name
MAX_HOLD_SECONDS = 7 * 86400.0

Stamp = tuple[int, ...] | None


class HoldFileError(Exception):
    """The holds file (or its directory) cannot be used; the message names the path."""


def check_text(text: str, what: str) -> str | None:
    """Why `text` cannot be a hold's glob or reason, or None when it can."""
    if len(text) > MAX_TEXT:
        return f"{what} is longer than {MAX_TEXT} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return f"{what} contains a control character"
    return None


def encode(holds: tuple[Hold, ...]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "holds": [
            {
                "domains": h.domains,
                "since": h.since,
                "until": h.until,
                "reason": h.reason,
                "by": h.by,
            }
            for h in holds
        ],
    }


def decode(data: Any) -> tuple[Hold, ...]:
    """Raises ValueError naming what is wrong."""
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} holds document")
    entries = data.get("holds")
    if not isinstance(entries, list):
        raise ValueError("`holds` is not a list")
    if len(entries) > MAX_HOLDS:
        raise ValueError(f"{len(entries)} holds; at most {MAX_HOLDS}")
    return tuple(_hold(entry, index) for index, entry in enumerate(entries))


def _hold(entry: Any, index: int) -> Hold:
    where = f"holds[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    texts: dict[str, str] = {}
    for key in ("domains", "reason", "by"):
        value = entry.get(key)
        if not isinstance(value, str):
            raise ValueError(f"{where}.{key} is not a string")
        problem = check_text(value, f"{where}.{key}")
        if problem:
            raise ValueError(problem)
        texts[key] = value
    if not texts["domains"]:
        raise ValueError(f"{where}.domains is empty")
    times: dict[str, float] = {}
    for key in ("since", "until"):
        value = entry.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where}.{key} is not a finite number of epoch seconds")
        times[key] = float(value)
    since = times["since"]
    until = min(times["until"], since + MAX_HOLD_SECONDS)  # no hold lasts for ever
    return Hold(texts["domains"], since, until, texts["reason"], texts["by"])


class HoldWatch:
    """The holds as the daemon last read them, read again when the file changes: a stat per
    check (mutable, owned by the controller)."""

    def __init__(self, store: HoldStore) -> None:
        self._store = store
        self._stamp = store.stamp()
        self.holds = store.read()

    def changed(self) -> bool:
        """Read the file again if it changed; True when the holds did."""
        stamp = self._store.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        holds, before = self._store.read(), self.holds
        self.holds = holds
        if holds.error is not None and holds.error != before.error:
            log.error("every domain is held: %s", holds.error)
        elif holds != before:
            log.info("holds changed: %s", ", ".join(h.domains for h in holds.holds) or "none")
        return holds != before


class HoldStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / HOLDS_DIR
        self.path = self.directory / HOLDS_FILE

    # -- reading (the daemon, `holds`, `plan`) -------------------------------------------------

    def stamp(self) -> Stamp:
        """Changes whenever the file is replaced, edited, or its mode or owner changes."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return None
        except OSError as error:
            return (-1, error.errno or 0)
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)

    def read(self) -> HoldSet:
        """The holds on file; no file is no hold, and a file that cannot be read is reported
        in `HoldSet.error` (which holds every domain)."""
        try:
            with self._open_directory(create=False) as directory:
                if directory is None:
                    return HoldSet()
                holds = self._read_in(directory)
        except HoldFileError as error:
            return HoldSet(error=str(error))
        return HoldSet(holds if holds is not None else ())

    # -- writing (`hold`, `release`) -----------------------------------------------------------

    def update(self, change: Callable[[tuple[Hold, ...]], tuple[Hold, ...]], now: float) -> None:
        """Replace the holds with `change(holds in force at now)`, under the writers' lock.

        Raises HoldFileError; an unreadable file is not overwritten (it may hold what somebody
        meant), the message says which file to look at.
        """
        with self._open_directory(create=True) as directory:
            assert directory is not None
            lock = self._open(directory, LOCK_FILE, os.O_RDWR | os.O_CREAT)
            try:
                _give_to_owner(lock, directory)
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError as error:
                os.close(lock)
                raise HoldFileError(f"{self.directory / LOCK_FILE}: {_why(error)}") from None
            try:
                current = self._read_in(directory) or ()
                kept = tuple(h for h in current if h.in_force(now))
                self._write_in(directory, change(kept))
            finally:
                os.close(lock)

    # -- files ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_directory(self, create: bool) -> Iterator[int | None]:
        if create:
            self._make_directories()
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            directory = os.open(self.directory, flags)
        except FileNotFoundError:
            if create:
                raise HoldFileError(f"{self.directory}: vanished while opening it") from None
            yield None
            return
        except OSError as error:
            # O_DIRECTORY answers ENOTDIR for a symlink before O_NOFOLLOW answers ELOOP.
            link = self.directory.is_symlink()
            why = _why(OSError(errno.ELOOP, "")) if link else _why(error)
            raise HoldFileError(f"{self.directory}: {why}") from None
        try:
            yield directory
        finally:
            os.close(directory)

    def _make_directories(self) -> None:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                owner = self.state_dir.stat()
                os.chown(self.directory, owner.st_uid, owner.st_gid, follow_symlinks=False)
        except OSError as error:
            raise HoldFileError(f"{error.filename or self.directory}: {_why(error)}") from None

    def _open(self, directory: int, name: str, flags: int, mode: int = 0o600) -> int:
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
        except OSError as error:
            raise HoldFileError(f"{self.directory / name}: {_why(error)}") from None

    def _read_in(self, directory: int) -> tuple[Hold, ...] | None:
        """None when there is no file yet."""
        try:
            handle = os.open(
                HOLDS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=directory,
            )  # fmt: skip
        except FileNotFoundError:
            return None
        except OSError as error:
            raise HoldFileError(f"{self.path}: {_why(error)}") from None
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                raise HoldFileError(f"{self.path}: not a regular file")
            raw = os.read(handle, MAX_FILE_BYTES + 1)
        except OSError as error:
            raise HoldFileError(f"{self.path}: {_why(error)}") from None
        finally:
            os.close(handle)
        if len(raw) > MAX_FILE_BYTES:
            raise HoldFileError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            return decode(json.loads(raw))
        except (ValueError, RecursionError) as error:
            raise HoldFileError(f"{self.path}: {error}") from None

    def _write_in(self, directory: int, holds: tuple[Hold, ...]) -> None:
        temporary = f".{HOLDS_FILE}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):  # left by a writer that was killed
            os.unlink(temporary, dir_fd=directory)
        handle = self._open(directory, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(handle, json.dumps(encode(holds), indent=1).encode("utf-8"))
            _give_to_owner(handle, directory)
            os.fsync(handle)
            os.close(handle)
            handle = -1
            os.replace(temporary, HOLDS_FILE, src_dir_fd=directory, dst_dir_fd=directory)
            os.fsync(directory)
        except OSError as error:
            if handle >= 0:
                os.close(handle)
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=directory)
            raise HoldFileError(f"{self.path}: {_why(error)}") from None


def _give_to_owner(handle: int, directory: int) -> None:
    """Root writes into the daemon's directory: what it creates there belongs to the daemon."""
    if os.geteuid() == 0:
        owner = os.fstat(directory)
        os.fchown(handle, owner.st_uid, owner.st_gid)


def _why(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "is a symbolic link; refusing to follow it"
    return error.strerror or str(error)
