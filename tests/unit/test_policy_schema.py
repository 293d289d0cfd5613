"""policies/schema.json and the loader agree on which policies are valid.

The schema is what editors use (yaml-language-server, YAML 1.2), so fixtures are read for it
with a YAML 1.2 core-schema loader: unquoted `22:00` and `no` are strings there, as an editor
sees them. Mistakes the schema cannot express are listed in LOADER_ONLY with the reason; the
test asserts the schema really accepts those, so the list cannot silently go stale.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from exporter.policy.fields import glob_problem
from exporter.policy.loader import PolicyError, load_policy

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "policies" / "schema.json").read_text())
FIXTURES = ROOT / "tests" / "fixtures" / "policies"
GOOD = [*sorted((FIXTURES / "good").glob("*.yaml")), ROOT / "policies" / "example.yaml"]
BAD = sorted((FIXTURES / "bad").glob("*.yaml"))

LOADER_ONLY = {
    "duplicate-key": "a YAML reader keeps the last value; the schema never sees the duplicate",
    "duplicate-window-name": "a duplicate mapping key, invisible to the schema",
    "duplicate-rule-name": "uniqueness of one property across array items",
    "unknown-window": "a reference to another part of the document",
    "unknown-timezone": "the IANA database is not part of the schema",
    "from-equals-to": "comparing two properties",
    "max-backoff-shorter": "comparing two durations",
    "yaml11-boolean-name": "YAML 1.2 (editors) reads unquoted `no` as a string",
    "octal-integer": "YAML 1.2 reads 010 as the decimal 10",
}


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML with the YAML 1.2 core schema's implicit types, as editors read YAML."""


Yaml12Loader.yaml_implicit_resolvers = {}
for tag, pattern, first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
]:
    Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), first)


def schema_accepts(path: Path) -> bool:
    try:
        document = yaml.load(path.read_text(), Loader=Yaml12Loader)  # a SafeLoader subclass
    except yaml.YAMLError:
        return False
    return Draft202012Validator(SCHEMA).is_valid(document)


def loader_accepts(path: Path) -> bool:
    try:
        load_policy(path)
    except PolicyError:
        return False
    return True


def test_schema_is_a_valid_draft_2020_12_schema_with_a_stable_id() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] == "https://blockpull-exporter.invalid/policy/v1/schema.json"


def objects(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Object schemas that define properties (conditions in `if`/`then` excluded)."""
    if isinstance(node, dict):
        if "properties" in node:
            yield path, node
        for key, value in node.items():
            if key not in ("if", "then"):
                yield from objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from objects(value, f"{path}/{i}")


def test_every_object_in_the_schema_is_closed() -> None:
    open_objects = [
        p for p, node in objects(SCHEMA) if node.get("additionalProperties") is not False
    ]
    assert open_objects == []


def test_every_property_in_the_schema_is_described() -> None:
    undescribed = [
        f"{path}/{name}"
        for path, node in objects(SCHEMA)
        for name, prop in node["properties"].items()
        if "description" not in prop
    ]
    assert undescribed == []


def test_example_policy_carries_the_schema_modeline_on_line_1() -> None:
    first_line = (ROOT / "policies" / "example.yaml").read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=./schema.json"


def test_there_are_enough_fixtures() -> None:
    assert len(BAD) >= 15
    assert set(LOADER_ONLY) <= {path.stem for path in BAD}


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_loader_and_schema_both_accept_good_policies(path: Path) -> None:
    assert (loader_accepts(path), schema_accepts(path)) == (True, True)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_loader_and_schema_agree_on_bad_policies(path: Path) -> None:
    assert not loader_accepts(path)
    # A loader-only fixture the schema starts rejecting belongs out of LOADER_ONLY.
    assert schema_accepts(path) is (path.stem in LOADER_ONLY)


def test_schema_glob_pattern_agrees_with_the_loader_on_all_short_strings() -> None:
    pattern = re.compile(SCHEMA["$defs"]["glob"]["pattern"])
    for length in range(1, 7):
        for chars in itertools.product("[]!a", repeat=length):
            text = "".join(chars)
            assert (pattern.match(text) is not None) is (glob_problem(text) is None), text


@pytest.mark.parametrize(
    ("definition", "valid", "invalid"),
    [
        ("bandwidth", ["50MiB/s", "1.5GiB/s", "500KB/s", "0.5MB/s", "unlimited"], ["0MiB/s", "50"]),
        ("duration", ["90s", "5m", "1h30m", "2d", "1.5h"], ["0s", "30m1h", "90", "s", ""]),
        ("time", ["22:00", "06:00", "6:00", "23:59"], ["24:00", "22:60", "2200", "22:00:00"]),
    ],
)
def test_schema_patterns_match_the_loader_forms(
    definition: str, valid: list[str], invalid: list[str]
) -> None:
    pattern = re.compile(SCHEMA["$defs"][definition]["pattern"])
    assert [text for text in valid if not pattern.match(text)] == []
    assert [text for text in invalid if pattern.match(text)] == []
