"""The policy as immutable, validated values.

Built only by `exporter.policy.loader`; everything else reads these types. A bandwidth of
`None` means unlimited; a bandwidth is always in bytes per second; durations are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import time
from enum import StrEnum


class OutsideWindows(StrEnum):
    """What happens to a rule's running pulls when none of its windows is open."""

    PAUSE = "pause"  # abort them; the pull resumes (keeping copied clusters) in the next window
    FINISH = "finish"  # let running pulls finish, start no new ones


class RuleAction(StrEnum):
    PULL = "pull"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Retry:
    max_attempts: int  # failures after which a disk is `gave_up`
    backoff: float  # seconds before the first retry; doubles with each failure
    max_backoff: float  # seconds, cap of the doubling


@dataclass(frozen=True)
class Budget:
    """Host-wide limits shared by every running block job."""

    bandwidth: int | None  # bytes/s; None = unlimited
    max_concurrent: int


@dataclass(frozen=True)
class MinFree:
    """The free space a pull must leave on the file system of the image it writes: a size in
    bytes or a percentage of the file system's size; zero on both turns the guard off."""

    bytes: int = 0
    percent: float = 0.0

    @property
    def off(self) -> bool:
        return self.bytes == 0 and self.percent == 0.0

    def floor(self, size: int) -> int:
        """Bytes that must stay free on a file system of `size` bytes (rounded up)."""
        return self.bytes + math.ceil(size * self.percent / 100)

    def __str__(self) -> str:
        from exporter.policy.units import format_size

        return f"{self.percent:g}%" if self.percent else format_size(self.bytes)


DEFAULT_MIN_FREE = MinFree(percent=10.0)


@dataclass(frozen=True)
class Defaults:
    budget: Budget
    outside_windows: OutsideWindows
    retry: Retry
    min_free: MinFree = DEFAULT_MIN_FREE


@dataclass(frozen=True)
class Window:
    """A weekly recurring period. `start`/`end` None means the whole day.

    A range whose end is not after its start crosses midnight: it opens on a listed day
    and closes on the following day. While open, the window may override the host budget:
    `bandwidth` applies only when `overrides_bandwidth` (None then means unlimited), and a
    `max_concurrent` of None inherits the defaults.
    """

    name: str
    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start: time | None
    end: time | None
    overrides_bandwidth: bool
    bandwidth: int | None
    max_concurrent: int | None


@dataclass(frozen=True)
class Rule:
    """First matching rule wins. A disk matches when every non-empty glob list matches."""

    name: str
    domains: tuple[str, ...]  # globs on the domain name
    disks: tuple[str, ...]  # globs on the target device (vda, sdb, ...)
    backing: tuple[str, ...]  # globs; match if any image in the backing chain matches
    exclude_domains: tuple[str, ...]
    exclude_disks: tuple[str, ...]
    keep_base: str | None  # glob; pull down to (and keep) the first chain image matching it
    windows: tuple[str, ...]  # names of windows; empty = any time
    priority: int  # higher first
    action: RuleAction


@dataclass(frozen=True)
class SharedGroup:
    """Storage that several hosts pull from or into; its limits hold for all hosts together.

    A disk is in the group when any image of its chain, the overlay included, matches `paths`.
    """

    name: str
    paths: tuple[str, ...]  # globs on image paths
    bandwidth: int | None  # bytes/s for all hosts' group pulls together; None = unlimited
    max_concurrent: int  # group pulls at once across all hosts


@dataclass(frozen=True)
class Policy:
    version: int
    timezone: str | None  # IANA name; None = the host's local time
    defaults: Defaults
    windows: tuple[Window, ...]
    rules: tuple[Rule, ...]
    source: str  # where it was loaded from, for messages
    fingerprint: str  # sha256 of the file's bytes; a change resets gave_up disks
    shared: tuple[SharedGroup, ...] = ()  # budgets shared with other hosts (a coordinator)

    def window(self, name: str) -> Window:
        for window in self.windows:
            if window.name == name:
                return window
        raise KeyError(name)
