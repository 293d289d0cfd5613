"""Mistakes found in a configuration file, and the error that reports them all at once.

However many mistakes a file holds, an error keeps the first few dozen in file order and a count
of the rest, so everything that shows it (stderr of `check`, the daemon log, the landing page)
stays small.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Self, TypeVar

MAX_REPORTED = 30  # issues shown per file; the rest are counted


@dataclass(frozen=True)
class Issue:
    """One mistake in a file. Line and column are 1-based; 0 means "no position"."""

    source: str
    line: int
    column: int
    yaml_path: str  # like `rules[1].windows[0]`; empty for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        path = f" {self.yaml_path}:" if self.yaml_path else ""
        return f"{where}:{path} {self.message}"


class ConfigError(ValueError):
    """The first issues of one file in file order, and how many more were found."""

    def __init__(self, errors: tuple[Issue, ...], omitted: int = 0) -> None:
        if len(errors) > MAX_REPORTED:
            errors, omitted = errors[:MAX_REPORTED], omitted + len(errors) - MAX_REPORTED
        lines = [str(issue) for issue in errors]
        if omitted and errors:
            lines.append(f"{errors[0].source}: and {omitted:,} more issues, not shown")
        super().__init__("\n".join(lines))
        self.errors = errors
        self.omitted = omitted

    @classmethod
    def unpositioned(cls, source: str, message: str) -> Self:
        """An error about the file as a whole (it cannot be read, say)."""
        return cls((Issue(source, 0, 0, "", message),))


E = TypeVar("E", bound=ConfigError)


@dataclass
class IssueLog:
    """Keeps the MAX_REPORTED issues earliest in the file and counts all of them.

    Checks do not run in file order (a window's mistakes can be found after a later rule's), so
    the kept ones are the smallest (line, column) seen so far, ties in the order found.
    """

    count: int = 0
    _kept: list[tuple[int, int, int, Issue]] = field(default_factory=list)  # a max-heap

    def add(self, issue: Issue) -> None:
        self.count += 1
        entry = (-issue.line, -issue.column, -self.count, issue)
        if len(self._kept) < MAX_REPORTED:
            heapq.heappush(self._kept, entry)
        elif entry > self._kept[0]:
            heapq.heapreplace(self._kept, entry)

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def full(self) -> bool:
        """True once further issues may not be shown: costly hints can be skipped."""
        return self.count >= MAX_REPORTED

    def error(self, kind: type[E]) -> E:
        kept = tuple(entry[3] for entry in sorted(self._kept, reverse=True))
        return kind(kept, self.count - len(kept))
