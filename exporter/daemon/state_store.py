"""The retry and job memory on disk: `<state.dir>/state.json`, written atomically, 0600, in a
directory made 0700.

A missing file is a first start. One that cannot be read as a state (corrupt, unreadable, or
not a regular file: a directory, a FIFO, a symbolic link) is moved aside (never deleted) and
the daemon starts with an empty memory: the worst case is that a running pull is adopted as new
and a failed disk gets its retries again. A failed save raises OSError and leaves nothing
behind; `StateSaver` is how the controller saves: it never raises, and tells whether the
last save worked (while it does not, the daemon starts no pull: a restart could not adopt it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from exporter.core.memory import Failures, Memory, TrackedJob
from exporter.core.model import DiskKey
from exporter.files import (
    NotRegularFileError,
    make_private_directory,
    read_regular_file,
    write_atomically,
)

FORMAT_VERSION = 1
MAX_STATE_BYTES = 64 * 1024**2  # ~1 MiB at 4,000 disks; a bigger file is not ours
log = logging.getLogger(__name__)


def encode(memory: Memory) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "failures": [
            {
                "domain": key.domain,
                "disk": key.disk,
                "count": f.count,
                "last_failure_at": f.last_failure_at,
                "disk_fingerprint": f.disk_fingerprint,
                "policy_fingerprint": f.policy_fingerprint,
            }
            for key, f in sorted(memory.failures.items())
        ],
        "tracked": [
            {
                "domain": key.domain,
                "disk": key.disk,
                "base": t.base,
                "started_at": t.started_at,
                "chain_before": list(t.chain_before),
            }
            for key, t in sorted(memory.tracked.items())
        ],
    }


def decode(data: Any) -> Memory:
    """Raises ValueError (or KeyError/TypeError) on anything that is not a valid state."""
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} state document")
    failures = {
        DiskKey(str(f["domain"]), str(f["disk"])): Failures(
            count=int(f["count"]),
            last_failure_at=float(f["last_failure_at"]),
            disk_fingerprint=str(f["disk_fingerprint"]),
            policy_fingerprint=str(f["policy_fingerprint"]),
        )
        for f in data["failures"]
    }
    tracked = {
        DiskKey(str(t["domain"]), str(t["disk"])): TrackedJob(
            base=None if t["base"] is None else str(t["base"]),
            started_at=float(t["started_at"]),
            chain_before=tuple(str(c) for c in t["chain_before"]),
        )
        for t in data["tracked"]
    }
    return Memory(failures=failures, tracked=tracked)


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"

    def load(self) -> Memory:
        """The memory; a state path that is not a readable state is moved aside and ignored."""
        try:
            return decode(
                json.loads(
                    read_regular_file(self.path, max_bytes=MAX_STATE_BYTES, follow_links=False)
                )
            )
        except FileNotFoundError:
            return Memory()
        except NotRegularFileError as error:
            problem = f"is {error.kind}, not a regular file"
        except OSError as error:
            problem = f"cannot be read ({error.strerror})"
        except (ValueError, KeyError, TypeError) as error:
            problem = f"is unreadable ({error})"
        self._move_aside(problem)
        return Memory()

    def load_readonly(self) -> Memory:
        """The memory for commands that act on nothing: any problem reads as empty."""
        try:
            return decode(
                json.loads(
                    read_regular_file(self.path, max_bytes=MAX_STATE_BYTES, follow_links=False)
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            return Memory()

    def save(self, memory: Memory) -> None:
        """Raises OSError when the state cannot be written (no temp file is left then)."""
        make_private_directory(self.path.parent)
        write_atomically(self.path, json.dumps(encode(memory), indent=1).encode())

    def _move_aside(self, problem: str) -> None:
        aside = self._aside_path()
        try:
            self.path.replace(aside)
        except OSError as error:
            log.warning(
                "state file %s %s and cannot be moved aside (%s); starting afresh",
                self.path,
                problem,
                error.strerror,
            )
            return
        log.warning("state file %s %s; moved to %s, starting afresh", self.path, problem, aside)

    def _aside_path(self) -> Path:
        """`state.json.corrupt-<pid>`, with a suffix when that is taken (a container's pid 1)."""
        first = self.path.with_name(f"{self.path.name}.corrupt-{os.getpid()}")
        aside, n = first, 0
        while os.path.lexists(aside):
            n += 1
            aside = first.with_name(f"{first.name}.{n}")
        return aside


class StateSaver:
    """Saves the memory through a StateStore (None: nowhere) when it changed since the last
    attempt. A failed save is never raised: it is logged once (and once more when saving works
    again) and counted."""

    def __init__(self, store: StateStore | None, memory: Memory) -> None:
        self._store = store
        self._attempted = memory  # the memory last saved, or last failed to save
        self._ok: bool | None = None if store else True  # None: no save tried yet
        self.failures = 0

    @property
    def saved(self) -> bool:
        """False while saving fails (True before the first attempt)."""
        return self._ok is not False

    def save(self, memory: Memory, *, again: bool = False) -> None:
        """`again`: also when the memory is the one of a failed attempt, or none was tried."""
        if self._store is None or (memory == self._attempted and (self._ok or not again)):
            return
        self._attempted = memory
        try:
            self._store.save(memory)
        except OSError as error:
            self.failures += 1
            if self._ok is not False:
                log.error(
                    "cannot save the state to %s: %s; no new pull starts until it can be saved "
                    "(a restart could not adopt it), running pulls go on",
                    self._store.path,
                    error,
                )
            self._ok = False
            return
        if self._ok is False:
            log.info("the state is saved to %s again; pulls may start", self._store.path)
        self._ok = True
