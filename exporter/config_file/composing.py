"""Turn the bytes of a YAML file into one node tree, within limits, or say where and why not.

Nodes, not Python values: they keep line and column for every message. PyYAML composes an alias
as the very node it names, so a small file can describe a huge tree (the "billion laughs") and
every check that walks it would repeat its work and its errors. The composer below therefore
counts every node the way a check would meet it, each alias counting all the nodes it repeats,
and refuses the file beyond MAX_NODES; it also refuses nesting beyond MAX_DEPTH (the composer
recurses, so a deep file would otherwise end in RecursionError) and aliases to a collection from
inside it (a cycle no check could finish walking).

Events come from libyaml when PyYAML has it (about ten times faster than the pure-Python
parser, which needs seconds for a 1 MiB file) and from the pure-Python parser otherwise.
"""

from __future__ import annotations

import re

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

if yaml.__with_libyaml__:
    from yaml.cyaml import CParser as _Parser
else:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


MAX_NODES = 100_000  # values, keys and list items, aliases counted as what they repeat
MAX_DEPTH = 32  # levels of nesting; a policy needs 6, a web config 4

_NULL = "tag:yaml.org,2002:null"

# What YAML allows in a stream (PyYAML's Reader.NON_PRINTABLE), checked before parsing so that
# the position is the same whichever parser runs.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


class DocumentError(Exception):
    """Why a file holds no usable document; line and column are 1-based, 0 if unknown."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message


def compose_document(data: bytes) -> Node | None:
    """The single YAML document in `data`, or None if the file holds none (only comments).

    Raises DocumentError for text that is not UTF-8, not YAML, more than one document, or
    beyond the limits above.
    """
    text = _decode(data)
    loader = _Loader(text)
    try:
        if not loader.check_node():
            return None
        node = loader.get_node()
        if loader.check_node():
            second = loader.get_node()
            raise DocumentError(
                second.start_mark.line + 1,
                second.start_mark.column + 1,
                "the file must hold exactly one YAML document; remove the second `---` or "
                "split the file",
            )
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(error) from None
    except yaml.YAMLError as error:
        raise DocumentError(0, 0, f"YAML error: {error}") from None
    finally:
        loader.dispose()
    if isinstance(node, ScalarNode) and node.tag == _NULL and node.value == "":
        return None  # `---` and nothing else
    return node


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocumentError(0, 0, f"not UTF-8 text (byte {error.start}): {error.reason}") from None
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise DocumentError(
            line, column, f"not a YAML text: character #x{ord(bad.group()):04x} is not allowed"
        )
    return text


def _syntax_error(error: yaml.MarkedYAMLError) -> DocumentError:
    mark = error.problem_mark or error.context_mark
    problem = "; ".join(part for part in (error.context, error.problem) if part)
    line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    start = error.context_mark
    if start is not None and error.context and start.line + 1 != line:
        problem += f" (the construct started on line {start.line + 1})"
    return DocumentError(line, column, f"YAML syntax error: {problem or error}")


class _Loader(Composer, _Parser, Resolver):  # type: ignore[misc]
    """PyYAML's composer over a parser, counting nodes and depth as it goes; no constructor."""

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        Composer.__init__(self)
        Resolver.__init__(self)
        self._nodes = 0
        self._depth = 0
        # (nodes, height) of each finished collection, aliases expanded; a collection missing
        # here is still being composed.
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Node | None, index: object) -> Node:
        mark = self.peek_event().start_mark
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            self._count_alias(node, mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise DocumentError(
                mark.line + 1, mark.column + 1, f"nested more than {MAX_DEPTH} levels deep"
            )
        self._count(1, mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, ScalarNode) and node.style == "":
            node.style = None  # libyaml's "plain", as the pure-Python parser says it
        elif isinstance(node, SequenceNode | MappingNode):
            children = [self._size(child) for child in _children(node)]
            self._sizes[id(node)] = (
                1 + sum(size for size, _ in children),
                1 + max((height for _, height in children), default=0),
            )
        return node

    def _count_alias(self, node: Node, mark: yaml.Mark) -> None:
        if not isinstance(node, ScalarNode) and id(node) not in self._sizes:
            raise DocumentError(
                mark.line + 1, mark.column + 1, "an alias inside the collection it names"
            )
        size, height = self._size(node)
        if self._depth + height > MAX_DEPTH:
            raise DocumentError(
                mark.line + 1,
                mark.column + 1,
                f"this alias nests its anchor more than {MAX_DEPTH} levels deep",
            )
        self._count(size, mark)

    def _count(self, nodes: int, mark: yaml.Mark) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise DocumentError(
                mark.line + 1,
                mark.column + 1,
                f"more than {MAX_NODES:,} YAML nodes (keys, values and list items, an alias "
                "counting every node it repeats): the file is too large, or its aliases "
                "multiply it",
            )

    def _size(self, node: Node) -> tuple[int, int]:
        return (1, 1) if isinstance(node, ScalarNode) else self._sizes[id(node)]


def _children(node: SequenceNode | MappingNode) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    return [part for pair in node.value for part in pair]
