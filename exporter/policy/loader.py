"""Read a policy file into a validated `Policy`, or report every mistake in it at once.

The generic checks (node kinds, YAML 1.1 pitfalls, positions, limits on the file) are in
exporter.config_file, the policy's kinds of value (bandwidths, durations, times, globs) in
exporter.policy.fields; this module holds the sections and what a policy means.

The policy is also bounded where its size costs the planner on every reconcile: at most
MAX_RULES rules, MAX_WINDOWS windows and MAX_GLOBS (in exporter.policy.fields) globs in each
glob list of a rule.
"""

from __future__ import annotations

import hashlib
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode

from exporter.config_file.checker import Fields, describe, is_null
from exporter.config_file.issues import ConfigError
from exporter.config_file.reading import UnreadableFileError, read_config_file
from exporter.policy.fields import PolicyFieldChecker
from exporter.policy.shared_section import parse_shared
from exporter.policy.values import (
    DEFAULT_MIN_FREE,
    Budget,
    Defaults,
    MinFree,
    OutsideWindows,
    Policy,
    Retry,
    Rule,
    RuleAction,
    Window,
)

SUPPORTED_VERSIONS = (1,)

MAX_RULES = 1000
MAX_WINDOWS = 100

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
DEFAULTS_KEYS = ("bandwidth", "max_concurrent", "outside_windows", "retry", "min_free")
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


class PolicyError(ConfigError):
    """The issues found in one policy file, in file order (at most a few dozen shown)."""


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy at `path`; `Policy.source` is `str(path)` as given."""
    return parse_policy(read_policy_file(path), str(path))


def read_policy_file(path: str | Path) -> bytes:
    """The file's bytes, read once (see exporter.config_file.reading), or PolicyError."""
    try:
        return read_config_file(path)
    except UnreadableFileError as error:
        raise PolicyError.unpositioned(str(path), str(error)) from None


def parse_policy(data: str | bytes, source: str) -> Policy:
    """Validate policy text or bytes; `source` names it in messages (a path, `<stdin>`, ...).

    The fingerprint is that of these very bytes (a str is fingerprinted as UTF-8).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogatepass")
    checker = _PolicyChecker(source)
    root = checker.document(data)
    if root is None and not checker.issues:
        checker.add(1, 1, "", "the file is empty; a policy needs at least `version: 1`")
    policy = None if root is None else checker.policy(root, fingerprint(data))
    if checker.issues or policy is None:
        raise checker.issues.error(PolicyError)
    return policy


def fingerprint(data: bytes) -> str:
    """What tells two policy files apart: a policy is tiny, and mtimes can tie within a tick."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class _PolicyChecker(PolicyFieldChecker):
    """The policy's sections, on top of the checks of its values."""

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

    def version(self, root: Node, entries: Fields) -> int | None:
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
            hint = self.suggest(name, sorted(zoneinfo.available_timezones()))
            self.at(
                node,
                "timezone",
                f'unknown time zone "{name}"{hint} (IANA names like '
                '"Europe/Berlin"; omit the key for the host\'s local time)',
            )
            return None
        return name

    def defaults(self, entries: Fields) -> Defaults | None:
        budget = Budget(DEFAULT_BANDWIDTH, DEFAULT_MAX_CONCURRENT)
        result = Defaults(budget, DEFAULT_OUTSIDE_WINDOWS, DEFAULT_RETRY)
        if "defaults" not in entries or is_null(entries["defaults"][1]):
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
        if "retry" in fields and not is_null(fields["retry"][1]):
            retry = self.retry(fields["retry"][1])
        min_free: MinFree | None = DEFAULT_MIN_FREE
        if "min_free" in fields:
            min_free = self.min_free(fields["min_free"][1], "defaults.min_free")
        if not ok or retry is None or min_free is None:
            return None
        return Defaults(Budget(bandwidth, max_concurrent), outside, retry, min_free)

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

    def windows(self, entries: Fields) -> tuple[tuple[str, ...] | None, tuple[Window, ...] | None]:
        """(the names of all windows, even invalid ones; the valid windows or None)."""
        if "windows" not in entries or is_null(entries["windows"][1]):
            return (), ()
        node = entries["windows"][1]
        if not isinstance(node, MappingNode):
            self.at(
                node,
                "windows",
                "expected a mapping of window names to windows, e.g. "
                f'`nights: {{from: "22:00", to: "06:00"}}`, got {describe(node)}',
            )
            return None, None
        if not self.at_most(node, "windows", len(node.value), MAX_WINDOWS, "windows"):
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
        if is_null(node):
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
                hint = self.suggest(text, DAY_NAMES) or " (mon, tue, wed, thu, fri, sat, sun)"
                self.at(item, f"{path}[{i}]", f'unknown day "{text}"{hint}')
                ok = False
            elif DAY_NAMES.index(text) in result:
                self.at(item, f"{path}[{i}]", f'day "{text}" is listed twice')
                ok = False
            else:
                result.add(DAY_NAMES.index(text))
        return frozenset(result) if ok else None

    def rules(
        self, entries: Fields, window_names: tuple[str, ...] | None
    ) -> tuple[Rule, ...] | None:
        if "rules" not in entries or is_null(entries["rules"][1]):
            return ()
        items = self.sequence(entries["rules"][1], "rules", "rules")
        if items is None or not self.at_most(
            entries["rules"][1], "rules", len(items), MAX_RULES, "rules"
        ):
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
        if is_null(node):
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
        if items is None or not self.at_most(node, path, len(items), MAX_WINDOWS, "windows"):
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
                hint = self.suggest(name, window_names, cutoff=0.5) or f" (windows: {known})"
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
