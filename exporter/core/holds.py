"""Holds: an operator's "hands off these domains until then", placed with `blockpull-exporter hold`.

Pure values; `exporter.daemon.hold_store` keeps them in the state directory. A hold names
domains by a glob (`fnmatchcase`, like the policy's `domains`) and always ends: `until` is set
when it is placed, and an expired hold is simply no longer in force. While a hold is in force
the planner starts no pull in a matching domain and aborts the daemon's own pulls there
(reason `held`); jobs somebody else runs are left alone.

A holds file that cannot be read holds every domain (`HoldSet.error`) until it reads again:
whoever wrote it wanted pulls to stop, and nothing tells which domains were meant.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

EVERY_DOMAIN = "*"


@dataclass(frozen=True)
class Hold:
    domains: str  # a glob on domain names
    since: float  # epoch seconds: placed (or renewed)
    until: float  # epoch seconds: the hold ends then
    reason: str  # free text from --reason; may be empty
    by: str  # who placed it (a user name), for status

    def in_force(self, now: float) -> bool:
        return now < self.until

    def matches(self, domain: str) -> bool:
        return fnmatch.fnmatchcase(domain, self.domains)

    def describe(self) -> str:
        """One phrase for plan and status reasons: what holds the domain, and why."""
        why = f": {self.reason}" if self.reason else ""
        return f"held by `hold {self.domains}` ({self.by}){why}"


@dataclass(frozen=True)
class HoldSet:
    """The holds read from the holds file; `error` says why it could not be read."""

    holds: tuple[Hold, ...] = ()
    error: str | None = None

    def in_force(self, now: float) -> tuple[Hold, ...]:
        if self.error is not None:
            return (self._everything(),)
        return tuple(h for h in self.holds if h.in_force(now))

    def holding(self, domain: str, now: float) -> Hold | None:
        """The hold in force on `domain` that lasts longest, or None."""
        found = [h for h in self.in_force(now) if h.matches(domain)]
        return max(found, key=lambda h: (h.until, h.domains)) if found else None

    def next_expiry(self, now: float) -> float | None:
        """When the next hold in force ends (the plan changes then), or None."""
        ends = [h.until for h in self.in_force(now) if math.isfinite(h.until)]
        return min(ends) if ends else None

    def _everything(self) -> Hold:
        reason = f"the holds file is unreadable ({self.error}); every domain is held"
        return Hold(EVERY_DOMAIN, 0.0, math.inf, reason, "-")


NO_HOLDS = HoldSet()
