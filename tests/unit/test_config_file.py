"""The shared config-file layer: how files are read, composed within limits, and reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.config_file.checker import Checker
from exporter.config_file.composing import (
    MAX_DEPTH,
    MAX_NODES,
    DocumentError,
    compose_document,
)
from exporter.config_file.issues import MAX_REPORTED, ConfigError, Issue, IssueLog
from exporter.config_file.reading import MAX_FILE_BYTES, UnreadableFileError, read_config_file

# -- reading ---------------------------------------------------------------------------------


def test_a_regular_file_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\n")
    assert read_config_file(path) == b"a: 1\n"


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"#" * MAX_FILE_BYTES)
    assert len(read_config_file(path)) == MAX_FILE_BYTES


def test_a_file_one_byte_over_the_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(UnreadableFileError, match="larger than 1 MiB"):
        read_config_file(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="a directory, not a regular file"):
        read_config_file(tmp_path)


def test_a_missing_file_says_why(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="cannot read: No such file or directory"):
        read_config_file(tmp_path / "absent.yaml")


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_bytes(b"a: 1\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")
    assert read_config_file(tmp_path / "link.yaml") == b"a: 1\n"


def open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_reading_leaves_no_descriptor_open(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    before = open_descriptors()
    for name in ("fifo", "absent", "big", "."):
        with pytest.raises(UnreadableFileError):
            read_config_file(tmp_path / name)
    assert open_descriptors() == before


# -- composing -------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_nesting_up_to_the_limit_composes() -> None:
    assert compose_document(nested(MAX_DEPTH)) is not None


def test_nesting_beyond_the_limit_is_refused_where_it_happens() -> None:
    with pytest.raises(DocumentError) as caught:
        compose_document(nested(MAX_DEPTH + 1))
    assert (caught.value.line, caught.value.column) == (1, MAX_DEPTH + 1)
    assert caught.value.message == f"nested more than {MAX_DEPTH} levels deep"


def test_an_alias_that_nests_its_anchor_too_deep_is_refused() -> None:
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    with pytest.raises(DocumentError, match="this alias nests its anchor more than"):
        compose_document(f"a: &deep {deep}\nb: [*deep]\n".encode())


def test_nodes_up_to_the_limit_compose() -> None:
    items = ", ".join(["1"] * (MAX_NODES - 1))  # the list itself is the last node
    assert compose_document(f"[{items}]".encode()) is not None


def test_nodes_beyond_the_limit_are_refused() -> None:
    items = ", ".join(["1"] * MAX_NODES)
    with pytest.raises(DocumentError, match=f"more than {MAX_NODES:,} YAML nodes"):
        compose_document(f"[{items}]".encode())


def test_an_alias_counts_every_node_it_repeats() -> None:
    half = MAX_NODES // 2
    items = ", ".join(["1"] * half)
    text = f"a: &list [{items}]\nb: *list\n"  # 2 keys, 2 x (half + 1) nodes, plus the mapping
    with pytest.raises(DocumentError) as caught:
        compose_document(text.encode())
    assert (caught.value.line, caught.value.column) == (2, 4)  # at the alias


def test_an_alias_inside_the_collection_it_names_is_refused() -> None:
    with pytest.raises(DocumentError, match="an alias inside the collection it names"):
        compose_document(b"a: &loop [1, *loop]\n")


def test_aliases_to_small_values_are_fine() -> None:
    node = compose_document(b"a: &x [web-*]\nb: *x\nc: *x\n")
    assert node is not None
    assert node.value[1][1] is node.value[0][1]


@pytest.mark.parametrize("text", [b"", b"# only a comment\n", b"---\n"])
def test_a_file_without_a_document_composes_to_none(text: bytes) -> None:
    assert compose_document(text) is None


def test_a_second_document_is_refused_where_it_starts() -> None:
    with pytest.raises(DocumentError, match="exactly one YAML document") as caught:
        compose_document(b"a: 1\n---\nb: 2\n")
    assert caught.value.line == 3


def test_plain_scalars_have_no_style_whichever_parser_runs() -> None:
    node = compose_document(b"a: no\n")
    assert node is not None
    assert node.value[0][1].style is None


# -- reporting -------------------------------------------------------------------------------


def test_issue_reads_like_a_compiler_message() -> None:
    issue = Issue("policy.yaml", 12, 7, "rules[1].windows[0]", 'unknown window "nite"')
    assert str(issue) == 'policy.yaml:12:7: rules[1].windows[0]: unknown window "nite"'


def test_an_issue_without_position_names_only_the_file() -> None:
    assert str(Issue("p.yaml", 0, 0, "", "cannot read")) == "p.yaml: cannot read"


def test_the_log_keeps_the_first_issues_in_file_order_and_counts_the_rest() -> None:
    log = IssueLog()
    for line in reversed(range(1, 101)):  # found last line first
        log.add(Issue("p", line, 1, "", f"line {line}"))
    error = log.error(ConfigError)
    assert [issue.line for issue in error.errors] == list(range(1, MAX_REPORTED + 1))
    assert error.omitted == 100 - MAX_REPORTED


def test_issues_on_the_same_spot_keep_the_order_they_were_found_in() -> None:
    log = IssueLog()
    for word in ("first", "second"):
        log.add(Issue("p", 3, 1, "", word))
    assert [issue.message for issue in log.error(ConfigError).errors] == ["first", "second"]


def test_the_error_message_ends_with_how_many_more_there_are() -> None:
    issues = tuple(Issue("p.yaml", line, 1, "", "wrong") for line in range(1, 1001))
    lines = str(ConfigError(issues)).splitlines()
    assert len(lines) == MAX_REPORTED + 1
    assert lines[-1] == f"p.yaml: and {1000 - MAX_REPORTED:,} more issues, not shown"


def test_a_short_error_has_no_count_line() -> None:
    assert str(ConfigError((Issue("p", 1, 1, "", "wrong"),))) == "p:1:1: wrong"


def test_hints_stop_once_no_more_issues_will_be_shown() -> None:
    checker = Checker("p")
    assert "did you mean" in checker.suggest("nigths", ("nights",))
    for line in range(MAX_REPORTED):
        checker.add(line + 1, 1, "", "wrong")
    assert checker.suggest("nigths", ("nights",)) == ""
