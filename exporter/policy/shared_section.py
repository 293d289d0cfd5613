"""The policy's `shared` section: storage groups whose budget all hosts share.

    shared:
      filer-a:
        paths: ["/mnt/filer-a/*"]      # globs on any image of a disk's chain, overlay included
        bandwidth: 800MiB/s            # all hosts' group pulls together; or "unlimited"
        max_concurrent: 8              # group pulls at once across all hosts

`paths` and `max_concurrent` are required (a group without them limits nothing it can name);
`bandwidth` defaults to unlimited. Group names become coordination keys shared by every host
and metric labels, so they are kept to letters, digits, `.`, `_` and `-`.
"""

from __future__ import annotations

import re

from yaml.nodes import MappingNode, Node

from exporter.config_file.checker import is_null
from exporter.policy.fields import PolicyFieldChecker
from exporter.policy.values import SharedGroup

SHARED_KEYS = ("paths", "bandwidth", "max_concurrent")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
EXAMPLE = '`filer-a: {paths: ["/mnt/filer-a/*"], bandwidth: 800MiB/s, max_concurrent: 8}`'


def parse_shared(checker: PolicyFieldChecker, node: Node | None) -> tuple[SharedGroup, ...] | None:
    """The groups of the `shared` section (absent or null: none), or None after an issue."""
    if node is None or is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        checker.at(node, "shared", f"expected a mapping of group names to groups, e.g. {EXAMPLE}")
        return None
    groups = [
        _group(checker, name, key, value, f"shared.{name}")
        for name, (key, value) in checker.entries(node, "shared", None).items()
    ]
    if any(group is None for group in groups):
        return None
    return tuple(group for group in groups if group is not None)


def _group(
    checker: PolicyFieldChecker, name: str, key: Node, node: Node, path: str
) -> SharedGroup | None:
    fields = checker.mapping(node, path, SHARED_KEYS)
    if fields is None:
        return None
    ok = True
    if not NAME_RE.match(name):
        checker.at(
            key,
            path,
            f"group name {name!r}: use 1 to 63 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (every host uses it as a coordination key)",
        )
        ok = False
    for required in ("paths", "max_concurrent"):
        if required not in fields:
            checker.at(node, path, f"a shared group needs `{required}`, e.g. {EXAMPLE}")
            ok = False
    paths = None
    if "paths" in fields:
        paths = checker.globs(fields["paths"][1], f"{path}.paths", allow_empty=True)
        if paths == ():
            checker.at(fields["paths"][1], f"{path}.paths", "a group with no paths has no disks")
            paths = None
        ok &= paths is not None
    max_concurrent = None
    if "max_concurrent" in fields:
        max_concurrent = checker.integer(fields["max_concurrent"][1], f"{path}.max_concurrent", 1)
        ok &= max_concurrent is not None
    bandwidth: int | None = None
    if "bandwidth" in fields:
        valid, bandwidth = checker.bandwidth(fields["bandwidth"][1], f"{path}.bandwidth")
        ok &= valid
    if not ok or paths is None or max_concurrent is None:
        return None
    return SharedGroup(name, paths, bandwidth, max_concurrent)
