"""The policy file as the daemon sees it: loaded once, reloaded on SIGHUP or when it changes.

A reload that fails keeps the last good policy in force; the error is kept for the metrics,
the landing page and `status`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from exporter.policy.loader import PolicyError, load_policy
from exporter.policy.values import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    changed: bool  # a new policy is now in force
    error: str | None  # the reload failed; the previous policy stays


def _digest(path: Path) -> str | None:
    """The file's content hash: a policy is tiny, and mtimes can tie within a tick."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class PolicySource:
    """Raises PolicyError from the constructor: a daemon never starts on a broken policy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digest = _digest(path)
        self.policy: Policy = load_policy(path)

    def changed_on_disk(self) -> bool:
        return _digest(self.path) != self._digest

    def reload(self) -> ReloadResult:
        self._digest = _digest(self.path)
        try:
            policy = load_policy(self.path)
        except PolicyError as error:
            log.error("policy reload failed, keeping the last good policy:\n%s", error)
            return ReloadResult(changed=False, error=str(error))
        except OSError as error:
            message = f"{self.path}: {error.strerror or error}"
            log.error("policy reload failed, keeping the last good policy: %s", message)
            return ReloadResult(changed=False, error=message)
        changed = policy.fingerprint != self.policy.fingerprint
        self.policy = policy
        if changed:
            log.info("policy reloaded from %s", self.path)
        return ReloadResult(changed=changed, error=None)
