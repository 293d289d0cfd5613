"""The policy file as the daemon sees it: loaded once, reloaded on SIGHUP or when it changes.

A reload that fails keeps the last good policy in force; the error is kept for the metrics,
the landing page and `status`. Each load reads the file once and fingerprints the very bytes it
parsed, so a file replaced mid-load cannot leave a fingerprint of one version on a policy of
another.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from exporter.config_file.reading import UnreadableFileError, read_config_file
from exporter.policy.loader import PolicyError, fingerprint, parse_policy, read_policy_file
from exporter.policy.values import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    changed: bool  # a new policy is now in force
    error: str | None  # the reload failed; the previous policy stays


class PolicySource:
    """Raises PolicyError from the constructor: a daemon never starts on a broken policy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.policy: Policy = parse_policy(read_policy_file(path), str(path))
        self._fingerprint: str | None = self.policy.fingerprint  # of the last bytes loaded

    def changed_on_disk(self) -> bool:
        try:
            current = fingerprint(read_config_file(self.path))
        except UnreadableFileError:
            current = None  # reported by the reload this triggers, then quiet until it changes
        return current != self._fingerprint

    def reload(self) -> ReloadResult:
        try:
            data = read_policy_file(self.path)
        except PolicyError as error:
            self._fingerprint = None  # retried when the file can be read again
            return self._failed(error)
        self._fingerprint = fingerprint(data)
        try:
            policy = parse_policy(data, str(self.path))
        except PolicyError as error:
            return self._failed(error)
        changed = policy.fingerprint != self.policy.fingerprint
        self.policy = policy
        if changed:
            log.info("policy reloaded from %s", self.path)
        return ReloadResult(changed=changed, error=None)

    @staticmethod
    def _failed(error: PolicyError) -> ReloadResult:
        log.error("policy reload failed, keeping the last good policy:\n%s", error)
        return ReloadResult(changed=False, error=str(error))
