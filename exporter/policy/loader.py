"""Read a policy file into a validated `Policy`, or report every mistake in it at once.

The file is parsed with PyYAML's node API, so each mistake carries its line, column and YAML
path. Types are decided here from the node tags and the raw text, not by PyYAML's YAML 1.1
implicit typing:

- Where a string is expected, an unquoted `yes`/`no`/`on`/`off`/`~`/`null` (which YAML 1.1
  reads as a boolean or null) is rejected with a hint to quote it: YAML 1.2 tools such as
  editors read it as a string, PyYAML does not, and `keep_base: no` is more likely a wish than
  a glob. The same holds for numbers and dates where a string was meant.
- An unquoted time such as `22:00` (a YAML 1.1 sexagesimal integer, 1320) is accepted as the
  time 22:00 in `from`/`to`: the raw text is kept, and in those keys it can mean nothing else.
- Integers must be plain decimals: `010` (YAML 1.1 octal 8), `0x10` and `1_000` are refused.
- YAML merge keys (`<<`) are refused; anchors and aliases work.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.policy.shared_section import parse_shared
from exporter.policy.units import parse_duration, parse_size_rate
from exporter.policy.values import (
    Budget,
    Defaults,
    OutsideWindows,
    Policy,
    Retry,
    Rule,
    RuleAction,
    Window,
)

SUPPORTED_VERSIONS = (1,)

DEFAULT_BANDWIDTH = 50 * 1024**2  # bytes/s
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_OUTSIDE_WINDOWS = OutsideWindows.PAUSE
DEFAULT_RETRY = Retry(max_attempts=5, backoff=60.0, max_backoff=3600.0)

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_GROUPS: dict[str, frozenset[int]] = {
    "daily": frozenset(range(7)),
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
}

ROOT_KEYS = ("version", "timezone", "defaults", "windows", "rules", "shared")
DEFAULTS_KEYS = ("bandwidth", "max_concurrent", "outside_windows", "retry")
RETRY_KEYS = ("max_attempts", "backoff", "max_backoff")
WINDOW_KEYS = ("days", "from", "to", "bandwidth", "max_concurrent")
RULE_KEYS = (
    "name",
    "domains",
    "disks",
    "backing",
    "exclude",
    "keep_base",
    "windows",
    "priority",
    "action",
)
EXCLUDE_KEYS = ("domains", "disks")

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _BOOL, _NULL = _TAG + "str", _TAG + "int", _TAG + "bool", _TAG + "null"
_MERGE = _TAG + "merge"
_YAML11_ONLY = frozenset({"yes", "no", "on", "off"})
_DECIMAL_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_TIME_RE = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_KIND = {
    _TAG + "bool": "a boolean",
    _TAG + "null": "nothing (null)",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "timestamp": "a date",
    _TAG + "str": "a string",
    _TAG + "binary": "binary data",
}


@dataclass(frozen=True)
class PolicyIssue:
    """One mistake in a policy file. Line and column are 1-based; 0 means "no position"."""

    source: str
    line: int
    column: int
    yaml_path: str  # like `rules[1].windows[0]`; empty for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        path = f" {self.yaml_path}:" if self.yaml_path else ""
        return f"{where}:{path} {self.message}"


class PolicyError(ValueError):
    """Every issue found in one policy file, in file order."""

    def __init__(self, errors: tuple[PolicyIssue, ...]) -> None:
        super().__init__("\n".join(str(issue) for issue in errors))
        self.errors = errors


class _Loader(yaml.SafeLoader):
    """A private subclass, so nothing here can leak into `yaml.SafeLoader` for other users."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy at `path`; `Policy.source` is `str(path)` as given."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PolicyError((PolicyIssue(source, 0, 0, "", f"cannot read: {error}"),)) from None
    return _parse_bytes(data, source)


def parse_policy(text: str, source: str) -> Policy:
    """Validate policy `text`; `source` names it in messages (a path, `<stdin>`, ...)."""
    return _parse_bytes(text.encode("utf-8", errors="surrogatepass"), source, text)


def _parse_bytes(data: bytes, source: str, text: str | None = None) -> Policy:
    fingerprint = hashlib.sha256(data).hexdigest()
    if text is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"not UTF-8 text (byte {error.start}): {error.reason}"
            raise PolicyError((PolicyIssue(source, 0, 0, "", message),)) from None
    checker = _Checker(source)
    root = _compose(text, checker)
    policy = None if root is None else checker.policy(root, fingerprint)
    if checker.issues or policy is None:
        raise PolicyError(tuple(sorted(checker.issues, key=lambda i: (i.line, i.column))))
    return policy


def _compose(text: str, checker: _Checker) -> Node | None:
    """The single document in `text`, or None after recording why there is none."""
    documents: list[Node] = []
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        checker.add(
            line, column, "", f"not a YAML text: character #x{error.character:04x} is not allowed"
        )
        return None
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                documents.append(node)
            if len(documents) > 1:
                checker.at(
                    node,
                    "",
                    "a policy file holds exactly one YAML document; remove the second `---` "
                    "or split the file",
                )
                return None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = "; ".join(part for part in (error.context, error.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        start = error.context_mark
        if start is not None and error.context and start.line + 1 != line:
            problem += f" (the construct started on line {start.line + 1})"
        checker.add(line, column, "", f"YAML syntax error: {problem or error}")
        return None
    except yaml.YAMLError as error:
        checker.add(0, 0, "", f"YAML error: {error}")
        return None
    except RecursionError:
        checker.add(0, 0, "", "YAML error: the document is nested too deeply")
        return None
    finally:
        loader.dispose()
    if not documents or (_Checker.is_null(documents[0]) and not documents[0].value):
        checker.add(1, 1, "", "the file is empty; a policy needs at least `version: 1`")
        return None
    return documents[0]


def _suggest(word: str, choices: Iterator[str] | tuple[str, ...], cutoff: float = 0.6) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f'; did you mean "{matches[0]}"?' if matches else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND.get(node.tag, f"a value tagged {node.tag}")


@dataclass
class _Checker:
    """Collects issues while turning nodes into values; one instance per load."""

    source: str
    issues: list[PolicyIssue] = field(default_factory=list)

    # -- recording ----------------------------------------------------------------------

    def add(self, line: int, column: int, path: str, message: str) -> None:
        self.issues.append(PolicyIssue(self.source, line, column, path, message))

    def at(self, node: Node, path: str, message: str) -> None:
        self.add(node.start_mark.line + 1, node.start_mark.column + 1, path, message)

    # -- shapes -------------------------------------------------------------------------

    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[Node, Node]] | None:
        """Key -> (key node, value node) for a mapping with only `allowed` string keys."""
        if not isinstance(node, MappingNode):
            self.at(node, path, f"expected a mapping, got {_describe(node)}")
            return None
        return self.entries(node, path, allowed)

    def entries(
        self, node: MappingNode, path: str, allowed: tuple[str, ...] | None
    ) -> dict[str, tuple[Node, Node]]:
        result: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.at(key_node, path, "YAML merge keys (<<) are not supported; write keys out")
                continue
            key = self.name(key_node, path, "key")
            if key is None:
                continue
            key_path = _join(path, key)
            if key in result:
                first = result[key][0].start_mark.line + 1
                self.at(key_node, key_path, f'duplicate key "{key}" (first on line {first})')
                continue
            if allowed is not None and key not in allowed:
                hint = _suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
                self.at(key_node, key_path, f'unknown key "{key}"{hint}')
                continue
            result[key] = (key_node, value_node)
        return result

    def sequence(self, node: Node, path: str, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.at(node, path, f"expected a list of {what}, got {_describe(node)}")
            return None
        return list(node.value)

    @staticmethod
    def is_null(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.tag == _NULL

    # -- scalars ------------------------------------------------------------------------

    def string(self, node: Node, path: str, what: str = "a string") -> str | None:
        if isinstance(node, ScalarNode) and node.tag == _STR:
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag == _NULL and node.value in ("", "~"):
            self.at(node, path, f"has no value; expected {what}")
            return None
        if isinstance(node, ScalarNode) and node.style is None and node.tag in _KIND:
            kind = _describe(node)
            yaml_version = " 1.1" if node.value.lower() in _YAML11_ONLY else ""
            self.at(
                node,
                path,
                f"expected {what}, but YAML{yaml_version} reads the unquoted {node.value!r} as "
                f'{kind}; quote it: "{node.value}"',
            )
            return None
        self.at(node, path, f"expected {what}, got {_describe(node)}")
        return None

    def name(self, node: Node, path: str, what: str) -> str | None:
        value = self.string(node, path, f"a {what} (a string)")
        if value is not None and not value.strip():
            self.at(node, path, f"a {what} must not be empty")
            return None
        return value

    def integer(self, node: Node, path: str, minimum: int | None = None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT):
            self.at(node, path, f"expected an integer, got {_describe(node)}")
            return None
        if not _DECIMAL_RE.match(node.value):
            self.at(
                node,
                path,
                f"write {node.value!r} as a plain decimal integer (YAML 1.1 reads leading "
                "zeros as octal, and `0x`, `_` and `:` forms differ between YAML versions)",
            )
            return None
        value = int(node.value)
        if minimum is not None and value < minimum:
            self.at(node, path, f"must be at least {minimum}, got {value}")
            return None
        return value

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(node, path, f"one of {', '.join(choices)}")
        if value is not None and value not in choices:
            hint = _suggest(value, choices) or f" (one of: {', '.join(choices)})"
            self.at(node, path, f'unknown value "{value}"{hint}')
            return None
        return value

    def bandwidth(self, node: Node, path: str) -> tuple[bool, int | None]:
        """(valid, bytes/s or None for unlimited)."""
        if isinstance(node, ScalarNode) and node.tag in (_INT, _TAG + "float"):
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

    def duration(self, node: Node, path: str) -> float | None:
        if isinstance(node, ScalarNode) and node.tag in (_INT, _TAG + "float"):
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
        if isinstance(node, ScalarNode) and node.tag in (_STR, _INT):
            match = _TIME_RE.match(node.value)
            if match:
                return time(int(match.group(1)), int(match.group(2)))
            hint = '; midnight is "00:00"' if node.value.startswith("24") else ""
            self.at(
                node, path, f'expected a time "HH:MM" (00:00 to 23:59), got "{node.value}"{hint}'
            )
            return None
        self.at(node, path, f'expected a time "HH:MM", got {_describe(node)}')
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
        if items is None:
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

    # -- sections -----------------------------------------------------------------------

    def policy(self, root: Node, fingerprint: str) -> Policy | None:
        entries = self.mapping(root, "", ROOT_KEYS)
        if entries is None:
            return None
        version = self.version(root, entries)
        timezone = None
        if "timezone" in entries:
            timezone = self.timezone(entries["timezone"][1])
        defaults = self.defaults(entries)
        window_names, windows = self.windows(entries)
        rules = self.rules(entries, window_names)
        shared = parse_shared(self, entries["shared"][1] if "shared" in entries else None)
        if version is None or defaults is None or windows is None or rules is None:
            return None
        if shared is None:
            return None
        return Policy(
            version=version,
            timezone=timezone,
            defaults=defaults,
            windows=windows,
            rules=rules,
            source=self.source,
            fingerprint=fingerprint,
            shared=shared,
        )

    def version(self, root: Node, entries: dict[str, tuple[Node, Node]]) -> int | None:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        if "version" not in entries:
            self.at(
                root, "", f"missing `version`; write `version: {SUPPORTED_VERSIONS[-1]}` at the top"
            )
            return None
        node = entries["version"][1]
        version = self.integer(node, "version")
        if version is not None and version not in SUPPORTED_VERSIONS:
            self.at(node, "version", f"unsupported version {version}; supported: {supported}")
            return None
        return version

    def timezone(self, node: Node) -> str | None:
        name = self.name(node, "timezone", "time zone name")
        if name is None:
            return None
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            hint = _suggest(name, tuple(sorted(zoneinfo.available_timezones())))
            self.at(
                node,
                "timezone",
                f'unknown time zone "{name}"{hint} (IANA names like '
                '"Europe/Berlin"; omit the key for the host\'s local time)',
            )
            return None
        return name

    def defaults(self, entries: dict[str, tuple[Node, Node]]) -> Defaults | None:
        budget = Budget(DEFAULT_BANDWIDTH, DEFAULT_MAX_CONCURRENT)
        result = Defaults(budget, DEFAULT_OUTSIDE_WINDOWS, DEFAULT_RETRY)
        if "defaults" not in entries or self.is_null(entries["defaults"][1]):
            return result
        fields = self.mapping(entries["defaults"][1], "defaults", DEFAULTS_KEYS)
        if fields is None:
            return None
        ok = True
        bandwidth, max_concurrent = budget.bandwidth, budget.max_concurrent
        if "bandwidth" in fields:
            valid, bandwidth = self.bandwidth(fields["bandwidth"][1], "defaults.bandwidth")
            ok &= valid
        if "max_concurrent" in fields:
            value = self.integer(fields["max_concurrent"][1], "defaults.max_concurrent", 1)
            ok &= value is not None
            max_concurrent = value if value is not None else max_concurrent
        outside = DEFAULT_OUTSIDE_WINDOWS
        if "outside_windows" in fields:
            choices = tuple(item.value for item in OutsideWindows)
            text = self.choice(fields["outside_windows"][1], "defaults.outside_windows", choices)
            ok &= text is not None
            outside = OutsideWindows(text) if text is not None else outside
        retry: Retry | None = DEFAULT_RETRY
        if "retry" in fields and not self.is_null(fields["retry"][1]):
            retry = self.retry(fields["retry"][1])
        if not ok or retry is None:
            return None
        return Defaults(Budget(bandwidth, max_concurrent), outside, retry)

    def retry(self, node: Node) -> Retry | None:
        fields = self.mapping(node, "defaults.retry", RETRY_KEYS)
        if fields is None:
            return None
        attempts: int | None = DEFAULT_RETRY.max_attempts
        backoff: float | None = DEFAULT_RETRY.backoff
        max_backoff: float | None = DEFAULT_RETRY.max_backoff
        if "max_attempts" in fields:
            attempts = self.integer(fields["max_attempts"][1], "defaults.retry.max_attempts", 1)
        if "backoff" in fields:
            backoff = self.duration(fields["backoff"][1], "defaults.retry.backoff")
        if "max_backoff" in fields:
            max_backoff = self.duration(fields["max_backoff"][1], "defaults.retry.max_backoff")
        if attempts is None or backoff is None or max_backoff is None:
            return None
        if max_backoff < backoff:
            node_for = fields.get("max_backoff", fields.get("backoff", (node, node)))[1]
            self.at(
                node_for,
                "defaults.retry.max_backoff",
                "max_backoff must not be shorter than backoff",
            )
            return None
        return Retry(attempts, backoff, max_backoff)

    def windows(
        self, entries: dict[str, tuple[Node, Node]]
    ) -> tuple[tuple[str, ...] | None, tuple[Window, ...] | None]:
        """(the names of all windows, even invalid ones; the valid windows or None)."""
        if "windows" not in entries or self.is_null(entries["windows"][1]):
            return (), ()
        node = entries["windows"][1]
        if not isinstance(node, MappingNode):
            self.at(
                node,
                "windows",
                "expected a mapping of window names to windows, e.g. "
                f'`nights: {{from: "22:00", to: "06:00"}}`, got {_describe(node)}',
            )
            return None, None
        entries_by_name = self.entries(node, "windows", None)
        result = [
            self.window(name, value, f"windows.{name}")
            for name, (_, value) in entries_by_name.items()
        ]
        names = tuple(entries_by_name)
        if any(window is None for window in result):
            return names, None
        return names, tuple(window for window in result if window is not None)

    def window(self, name: str, node: Node, path: str) -> Window | None:
        if self.is_null(node):
            self.at(
                node,
                path,
                "an empty window is always open and changes nothing; give it "
                "`days`, `from`/`to` or a budget",
            )
            return None
        fields = self.mapping(node, path, WINDOW_KEYS)
        if fields is None:
            return None
        ok = True
        days: frozenset[int] | None = DAY_GROUPS["daily"]
        if "days" in fields:
            days = self.days(fields["days"][1], f"{path}.days")
        start = end = None
        if "from" in fields:
            start = self.clock(fields["from"][1], f"{path}.from")
            ok &= start is not None
        if "to" in fields:
            end = self.clock(fields["to"][1], f"{path}.to")
            ok &= end is not None
        if ("from" in fields) != ("to" in fields):
            given, missing = ("from", "to") if "from" in fields else ("to", "from")
            self.at(
                fields[given][0],
                f"{path}.{given}",
                f"`{given}` needs `{missing}` too; omit both for the whole day",
            )
            ok = False
        elif start is not None and start == end:
            self.at(
                fields["to"][1],
                f"{path}.to",
                "`from` equals `to`, so the window never opens; omit both for the whole day",
            )
            ok = False
        overrides = "bandwidth" in fields
        bandwidth = None
        if overrides:
            valid, bandwidth = self.bandwidth(fields["bandwidth"][1], f"{path}.bandwidth")
            ok &= valid
        max_concurrent = None
        if "max_concurrent" in fields:
            max_concurrent = self.integer(fields["max_concurrent"][1], f"{path}.max_concurrent", 1)
            ok &= max_concurrent is not None
        if not ok or days is None:
            return None
        return Window(name, days, start, end, overrides, bandwidth, max_concurrent)

    def days(self, node: Node, path: str) -> frozenset[int] | None:
        if isinstance(node, ScalarNode):
            text = self.choice(node, path, tuple(DAY_GROUPS))
            return DAY_GROUPS[text] if text is not None else None
        items = self.sequence(node, path, 'days ("mon" ... "sun")')
        if items is None:
            return None
        if not items:
            self.at(
                node,
                path,
                'an empty day list means the window never opens; list days or write "daily"',
            )
            return None
        result: set[int] = set()
        ok = True
        for i, item in enumerate(items):
            text = self.string(item, f"{path}[{i}]", 'a day ("mon" ... "sun")')
            if text is None:
                ok = False
            elif text.lower() in DAY_NAMES and text != text.lower():
                self.at(item, f"{path}[{i}]", f'days are lowercase: "{text.lower()}"')
                ok = False
            elif text not in DAY_NAMES:
                hint = _suggest(text, DAY_NAMES) or " (mon, tue, wed, thu, fri, sat, sun)"
                self.at(item, f"{path}[{i}]", f'unknown day "{text}"{hint}')
                ok = False
            elif DAY_NAMES.index(text) in result:
                self.at(item, f"{path}[{i}]", f'day "{text}" is listed twice')
                ok = False
            else:
                result.add(DAY_NAMES.index(text))
        return frozenset(result) if ok else None

    def rules(
        self, entries: dict[str, tuple[Node, Node]], window_names: tuple[str, ...] | None
    ) -> tuple[Rule, ...] | None:
        if "rules" not in entries or self.is_null(entries["rules"][1]):
            return ()
        items = self.sequence(entries["rules"][1], "rules", "rules")
        if items is None:
            return None
        result: list[Rule | None] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(items):
            rule = self.rule(item, f"rules[{i}]", window_names)
            result.append(rule)
            if rule is None:
                continue
            if rule.name in first_line:
                name_node = _value_of(item, "name")
                self.at(
                    name_node or item,
                    f"rules[{i}].name",
                    f'duplicate rule name "{rule.name}" (first on line {first_line[rule.name]})',
                )
                result.append(None)
            else:
                first_line[rule.name] = item.start_mark.line + 1
        if any(rule is None for rule in result):
            return None
        return tuple(rule for rule in result if rule is not None)

    def rule(self, node: Node, path: str, window_names: tuple[str, ...] | None) -> Rule | None:
        fields = self.mapping(node, path, RULE_KEYS)
        if fields is None:
            return None
        ok = True

        def get(key: str, parse: Callable[[Node, str], object], default: object) -> object:
            nonlocal ok
            if key not in fields:
                return default
            value = parse(fields[key][1], f"{path}.{key}")
            ok &= value is not None
            return value

        name = None
        if "name" not in fields:
            self.at(node, path, "a rule needs a `name` (used in metrics and logs)")
            ok = False
        else:
            name = self.name(fields["name"][1], f"{path}.name", "rule name")
            ok &= name is not None
        domains = get("domains", lambda n, p: self.globs(n, p, allow_empty=False), ("*",))
        disks = get("disks", lambda n, p: self.globs(n, p, allow_empty=False), ("*",))
        backing = get("backing", lambda n, p: self.globs(n, p, allow_empty=True), ())
        exclude = get("exclude", self.exclude, ((), ()))
        keep_base = get("keep_base", self.glob, None)
        windows = get("windows", lambda n, p: self.rule_windows(n, p, window_names), ())
        priority = get("priority", self.integer, 0)
        action_text = get("action", lambda n, p: self.choice(n, p, ("pull", "ignore")), "pull")
        if action_text == "ignore" and "keep_base" in fields:
            self.at(
                fields["keep_base"][0],
                f"{path}.keep_base",
                "`keep_base` has no effect with `action: ignore`; remove one of them",
            )
            ok = False
        if not ok:
            return None
        assert isinstance(exclude, tuple)
        return Rule(
            name=str(name),
            domains=domains,  # type: ignore[arg-type]
            disks=disks,  # type: ignore[arg-type]
            backing=backing,  # type: ignore[arg-type]
            exclude_domains=exclude[0],
            exclude_disks=exclude[1],
            keep_base=keep_base,  # type: ignore[arg-type]
            windows=windows,  # type: ignore[arg-type]
            priority=priority,  # type: ignore[arg-type]
            action=RuleAction(action_text),
        )

    def exclude(self, node: Node, path: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        if self.is_null(node):
            return (), ()
        fields = self.mapping(node, path, EXCLUDE_KEYS)
        if fields is None:
            return None
        parsed = {
            key: self.globs(fields[key][1], f"{path}.{key}", allow_empty=True)
            if key in fields
            else ()
            for key in EXCLUDE_KEYS
        }
        if parsed["domains"] is None or parsed["disks"] is None:
            return None
        return parsed["domains"], parsed["disks"]

    def rule_windows(
        self, node: Node, path: str, window_names: tuple[str, ...] | None
    ) -> tuple[str, ...] | None:
        items = self.sequence(node, path, "window names")
        if items is None:
            return None
        if not items:
            self.at(node, path, "an empty list would mean any time; omit `windows` instead")
            return None
        names: list[str] = []
        ok = True
        for i, item in enumerate(items):
            name = self.name(item, f"{path}[{i}]", "window name")
            if name is None:
                ok = False
            elif name in names:
                self.at(item, f"{path}[{i}]", f'window "{name}" is listed twice')
                ok = False
            elif window_names is not None and name not in window_names:
                known = ", ".join(window_names) or "none defined"
                hint = _suggest(name, window_names, cutoff=0.5) or f" (windows: {known})"
                self.at(item, f"{path}[{i}]", f'unknown window "{name}"{hint}')
                ok = False
            else:
                names.append(name)
        return tuple(names) if ok else None


def _value_of(node: Node, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return value_node
    return None


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
