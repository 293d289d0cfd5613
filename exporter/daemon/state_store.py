"""The retry and job memory on disk: `<state.dir>/state.json`, written atomically.

A missing file is a first start. A corrupt one is moved aside (never deleted) and the daemon
starts with an empty memory: the worst case is that a running pull is adopted as new and a
failed disk gets its retries again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from exporter.core.memory import Failures, Memory, TrackedJob
from exporter.core.model import DiskKey

FORMAT_VERSION = 1
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
        """The memory; a corrupt file is moved aside (kept for a post-mortem) and ignored."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Memory()
        try:
            return decode(json.loads(raw))
        except (ValueError, KeyError, TypeError) as error:
            aside = self.path.with_name(f"state.json.corrupt-{os.getpid()}")
            self.path.replace(aside)
            log.warning(
                "state file %s is unreadable (%s); moved to %s, starting afresh",
                self.path,
                error,
                aside,
            )
            return Memory()

    def load_readonly(self) -> Memory:
        """The memory for commands that act on nothing: any problem reads as empty."""
        try:
            return decode(json.loads(self.path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return Memory()

    def save(self, memory: Memory) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".state.json.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(encode(memory), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
