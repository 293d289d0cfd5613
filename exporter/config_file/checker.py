"""Check YAML nodes against the shape a file needs, collecting every mistake with its place.

`Checker` holds the generic checks (mappings with known keys, lists, strings, integers,
booleans, choices) and the "did you mean" hints; the policy loader and the web config extend it
with their own sections. A check records an issue and returns None where the value is wrong, so
one run reports every mistake in the file.

Types are decided from the node tags and the raw text, not by PyYAML's YAML 1.1 implicit
typing: where a string is expected, an unquoted `yes`/`no`/`on`/`off`/`~`/`null` (which YAML
1.1 reads as a boolean or null) is rejected with a hint to quote it, since YAML 1.2 tools such as
editors read it as a string; the same holds for numbers and dates where a string was meant.
Integers must be plain decimals (`010` is octal in YAML 1.1; `0x10` and `1_000` differ between
versions). YAML merge keys (`<<`) are refused; anchors and aliases work.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from exporter.config_file.composing import DocumentError, compose_document
from exporter.config_file.issues import Issue, IssueLog

TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = TAG + "str", TAG + "int", TAG + "float", TAG + "bool", TAG + "null"
_MERGE = TAG + "merge"
_YAML11_ONLY = frozenset({"yes", "no", "on", "off"})
_TRUE = frozenset({"true", "yes", "on"})  # PyYAML's YAML 1.1 booleans, any case
_DECIMAL_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_KIND = {
    TAG + "bool": "a boolean",
    TAG + "null": "nothing (null)",
    TAG + "int": "an integer",
    TAG + "float": "a number",
    TAG + "timestamp": "a date",
    TAG + "str": "a string",
    TAG + "binary": "binary data",
}

Fields = dict[str, tuple[Node, Node]]  # key -> (key node, value node)


def join(path: str, key: str) -> str:
    """The YAML path of `key` inside `path`: `rules[1]` + `name` -> `rules[1].name`."""
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    """What a node is, for messages: `a mapping`, `an integer`, ..."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND.get(node.tag, f"a value tagged {node.tag}")


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL


@dataclass
class Checker:
    """Collects issues while turning nodes into values; one instance per file."""

    source: str  # names the file in every issue
    issues: IssueLog = field(default_factory=IssueLog)

    # -- recording ----------------------------------------------------------------------

    def add(self, line: int, column: int, path: str, message: str) -> None:
        self.issues.add(Issue(self.source, line, column, path, message))

    def at(self, node: Node, path: str, message: str) -> None:
        self.add(node.start_mark.line + 1, node.start_mark.column + 1, path, message)

    def suggest(self, word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
        """`; did you mean "x"?`, or "" (also once no more issues will be shown)."""
        if self.issues.full:
            return ""  # difflib is the costliest check; a file with thousands of mistakes
        matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
        return f'; did you mean "{matches[0]}"?' if matches else ""

    # -- the document -------------------------------------------------------------------

    def document(self, data: bytes) -> Node | None:
        """The file's single document; None if it has none or after recording why not."""
        try:
            return compose_document(data)
        except DocumentError as error:
            self.add(error.line, error.column, "", error.message)
            return None

    # -- shapes -------------------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> Fields | None:
        """Key -> (key node, value node) for a mapping with only `allowed` string keys."""
        if not isinstance(node, MappingNode):
            where = "" if path else " at the top level"
            self.at(node, path, f"expected a mapping{where}, got {describe(node)}")
            return None
        return self.entries(node, path, allowed)

    def entries(self, node: MappingNode, path: str, allowed: tuple[str, ...] | None) -> Fields:
        """The string keys of a mapping (any key if `allowed` is None), each once."""
        result: Fields = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.at(key_node, path, "YAML merge keys (<<) are not supported; write keys out")
                continue
            key = self.name(key_node, path, "key")
            if key is None:
                continue
            key_path = join(path, key)
            if key in result:
                first = result[key][0].start_mark.line + 1
                self.at(key_node, key_path, f'duplicate key "{key}" (first on line {first})')
                continue
            if allowed is not None and key not in allowed:
                hint = self.suggest(key, allowed) or f" (allowed: {', '.join(allowed)})"
                self.at(key_node, key_path, f'unknown key "{key}"{hint}')
                continue
            result[key] = (key_node, value_node)
        return result

    def sequence(self, node: Node, path: str, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.at(node, path, f"expected a list of {what}, got {describe(node)}")
            return None
        return list(node.value)

    def at_most(self, node: Node, path: str, count: int, most: int, what: str) -> bool:
        """Whether `count` items are within `most`; records why not."""
        if count <= most:
            return True
        self.at(node, path, f"{count:,} {what}; at most {most:,} are allowed")
        return False

    # -- scalars ------------------------------------------------------------------------

    def string(self, node: Node, path: str, what: str = "a string") -> str | None:
        if isinstance(node, ScalarNode) and node.tag == STR:
            return str(node.value)
        if isinstance(node, ScalarNode) and node.tag == NULL and node.value in ("", "~"):
            self.at(node, path, f"has no value; expected {what}")
            return None
        if isinstance(node, ScalarNode) and node.style is None and node.tag in _KIND:
            kind = describe(node)
            yaml_version = " 1.1" if node.value.lower() in _YAML11_ONLY else ""
            self.at(
                node,
                path,
                f"expected {what}, but YAML{yaml_version} reads the unquoted {node.value!r} as "
                f'{kind}; quote it: "{node.value}"',
            )
            return None
        self.at(node, path, f"expected {what}, got {describe(node)}")
        return None

    def strings(self, node: Node, path: str, what: str) -> tuple[str, ...] | None:
        """A list of strings; nothing (null) is the empty list."""
        if is_null(node):
            return ()
        items = self.sequence(node, path, what)
        if items is None:
            return None
        values = [self.string(item, f"{path}[{i}]") for i, item in enumerate(items)]
        if any(value is None for value in values):
            return None
        return tuple(value for value in values if value is not None)

    def name(self, node: Node, path: str, what: str) -> str | None:
        value = self.string(node, path, f"a {what} (a string)")
        if value is not None and not value.strip():
            self.at(node, path, f"a {what} must not be empty")
            return None
        return value

    def integer(self, node: Node, path: str, minimum: int | None = None) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == INT):
            self.at(node, path, f"expected an integer, got {describe(node)}")
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

    def boolean(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == BOOL:
            return node.value.lower() in _TRUE
        self.at(node, path, f"expected true or false, got {describe(node)}")
        return None

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str | None:
        value = self.string(node, path, f"one of {', '.join(choices)}")
        if value is not None and value not in choices:
            hint = self.suggest(value, choices) or f" (one of: {', '.join(choices)})"
            self.at(node, path, f'unknown value "{value}"{hint}')
            return None
        return value
