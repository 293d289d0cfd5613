"""The policy's own kinds of value, checked on YAML nodes: bandwidths, durations, times, globs.

Beyond the shared checks, an unquoted time such as `22:00` (a YAML 1.1 sexagesimal integer,
1320) is accepted as the time 22:00: the raw text is kept, and where a time is expected it can
mean nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time

from yaml.nodes import Node, ScalarNode

from exporter.config_file.checker import FLOAT, INT, STR, Checker, describe
from exporter.policy.units import parse_duration, parse_size, parse_size_rate
from exporter.policy.values import MinFree

MAX_GLOBS = 100  # in each of a rule's glob lists

_TIME_RE = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


@dataclass
class PolicyFieldChecker(Checker):
    """The generic checks plus the policy's value kinds; `loader` adds the sections."""

    def bandwidth(self, node: Node, path: str) -> tuple[bool, int | None]:
        """(valid, bytes/s or None for unlimited)."""
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT):
            self.at(node, path, f'a bandwidth needs a unit, e.g. "{node.value}MiB/s"')
            return False, None
        text = self.string(node, path, 'a bandwidth like "200MiB/s" or "unlimited"')
        if text is None:
            return False, None
        try:
            value = parse_size_rate(text)
        except ValueError as error:
            self.at(node, path, str(error))
            return False, None
        if value is not None and value < 1:
            self.at(
                node,
                path,
                f'a bandwidth must be positive, got "{text}"; to stop pulls, '
                "use windows or `action: ignore`",
            )
            return False, None
        return True, value

    def min_free(self, node: Node, path: str) -> MinFree | None:
        """A size ("20GiB"), a percentage of the file system ("10%"), or 0 (no guard)."""
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT):
            if node.value.strip() in ("0", "0.0"):
                return MinFree()
            self.at(node, path, f'min_free needs a unit or a percent sign, e.g. "{node.value}%"')
            return None
        text = self.string(node, path, 'a size like "20GiB" or a percentage like "10%"')
        if text is None:
            return None
        stripped = text.strip()
        try:
            if stripped.endswith("%"):
                percent = float(stripped[:-1])
                if not 0 <= percent < 100:
                    raise ValueError(f'a percentage from 0% to 99%, got "{text}"')
                return MinFree(percent=percent)
            return MinFree(bytes=parse_size(stripped))
        except ValueError as error:
            self.at(node, path, str(error))
            return None

    def duration(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (INT, FLOAT):
            self.at(node, path, f'a duration needs a unit, e.g. "{node.value}s"')
            return None
        text = self.string(node, path, 'a duration like "90s", "5m" or "1h30m"')
        if text is None:
            return None
        try:
            value = parse_duration(text)
        except ValueError as error:
            self.at(node, path, str(error))
            return None
        if value <= 0:
            self.at(node, path, f'a duration must be positive, got "{text}"')
            return None
        return value

    def clock(self, node: Node, path: str) -> time | None:
        # An unquoted 22:00 is tagged int (sexagesimal) by YAML 1.1; its raw text is kept.
        if isinstance(node, ScalarNode) and node.tag in (STR, INT):
            match = _TIME_RE.match(node.value)
            if match:
                return time(int(match.group(1)), int(match.group(2)))
            hint = '; midnight is "00:00"' if node.value.startswith("24") else ""
            self.at(
                node, path, f'expected a time "HH:MM" (00:00 to 23:59), got "{node.value}"{hint}'
            )
            return None
        self.at(node, path, f'expected a time "HH:MM", got {describe(node)}')
        return None

    def glob(self, node: Node, path: str) -> str | None:
        value = self.string(node, path, "a glob (a string)")
        if value is None:
            return None
        problem = glob_problem(value)
        if problem:
            self.at(node, path, problem)
            return None
        return value

    def globs(self, node: Node, path: str, allow_empty: bool) -> tuple[str, ...] | None:
        items = self.sequence(node, path, 'globs, e.g. ["web-*"]')
        if items is None or not self.at_most(node, path, len(items), MAX_GLOBS, "globs"):
            return None
        if not items and not allow_empty:
            self.at(
                node,
                path,
                "an empty list matches nothing useful; omit the key to match "
                "everything, or use `action: ignore`",
            )
            return None
        values = [self.glob(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if any(value is None for value in values):
            return None
        return tuple(value for value in values if value is not None)


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a usable fnmatch glob, or None.

    fnmatch silently treats an unclosed `[` as a literal character; an operator who wrote
    `vd[ab` almost certainly meant a character class, so it is an error here.
    """
    if not pattern:
        return "a glob must not be empty"
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            # Same scan as fnmatch.translate: `[!` negates, a `]` right after opens is literal.
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return (
                    f'unbalanced "[" at position {i + 1} in glob "{pattern}"; write "[[]" '
                    "for a literal ["
                )
            i = j
        i += 1
    return None
