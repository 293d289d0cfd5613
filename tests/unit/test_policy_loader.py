"""The policy loader: values, defaults, YAML 1.1 decisions, and error reporting."""

from __future__ import annotations

import hashlib
import string
from datetime import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config_file.composing import MAX_DEPTH, MAX_NODES
from exporter.config_file.issues import MAX_REPORTED, Issue
from exporter.config_file.reading import MAX_FILE_BYTES
from exporter.policy.fields import MAX_GLOBS, glob_problem
from exporter.policy.loader import MAX_RULES, MAX_WINDOWS, PolicyError, load_policy, parse_policy
from exporter.policy.values import OutsideWindows, RuleAction

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "example.yaml"


def issues_of(text: str) -> tuple[Issue, ...]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    return caught.value.errors


def only_issue(text: str) -> Issue:
    issues = issues_of(text)
    assert len(issues) == 1, issues
    return issues[0]


def test_minimal_policy_gets_sane_defaults() -> None:
    policy = parse_policy("version: 1\n", "p.yaml")
    assert policy.timezone is None
    assert policy.defaults.budget.bandwidth == 50 * 1024**2
    assert policy.defaults.budget.max_concurrent == 2
    assert policy.defaults.outside_windows is OutsideWindows.PAUSE
    assert (policy.defaults.retry.max_attempts, policy.defaults.retry.backoff) == (5, 60.0)
    assert policy.defaults.retry.max_backoff == 3600.0
    assert policy.windows == ()
    assert policy.rules == ()


def test_rule_defaults_match_everything_at_any_time() -> None:
    policy = parse_policy("version: 1\nrules:\n  - name: all\n", "p.yaml")
    rule = policy.rules[0]
    assert (rule.domains, rule.disks, rule.backing) == (("*",), ("*",), ())
    assert (rule.exclude_domains, rule.exclude_disks, rule.windows) == ((), (), ())
    assert (rule.keep_base, rule.priority, rule.action) == (None, 0, RuleAction.PULL)


def test_example_policy_loads_with_its_windows_and_rules() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.timezone == "Europe/Berlin"
    assert [w.name for w in policy.windows] == ["nights", "weekend", "lunch"]
    nights = policy.window("nights")
    assert nights.days == frozenset(range(5))
    assert (nights.start, nights.end) == (time(22), time(6))
    assert (nights.bandwidth, nights.max_concurrent) == (400 * 1024**2, 4)
    weekend = policy.window("weekend")
    assert (weekend.overrides_bandwidth, weekend.bandwidth) == (True, None)
    assert [r.name for r in policy.rules] == ["databases", "web", "ci", "everything-else"]


def test_source_is_the_path_as_given_and_fingerprint_the_sha256_of_the_bytes() -> None:
    policy = load_policy(str(EXAMPLE))
    assert policy.source == str(EXAMPLE)
    assert policy.fingerprint == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()


def test_parse_policy_fingerprints_the_utf8_text() -> None:
    text = "version: 1\n# grüße\n"
    assert parse_policy(text, "x").fingerprint == hashlib.sha256(text.encode()).hexdigest()


def test_window_without_bandwidth_does_not_override_it() -> None:
    policy = parse_policy("version: 1\nwindows:\n  w: {days: [mon], max_concurrent: 3}\n", "p")
    window = policy.window("w")
    assert (window.overrides_bandwidth, window.bandwidth, window.max_concurrent) == (
        False,
        None,
        3,
    )
    assert (window.start, window.end) == (None, None)


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("daily", set(range(7))),
        ("weekdays", {0, 1, 2, 3, 4}),
        ("weekends", {5, 6}),
        ("[sun, wed]", {6, 2}),
    ],
)
def test_days_accept_lists_and_groups(days: str, expected: set[int]) -> None:
    policy = parse_policy(f"version: 1\nwindows:\n  w: {{days: {days}}}\n", "p")
    assert policy.window("w").days == frozenset(expected)


def test_days_default_to_daily() -> None:
    policy = parse_policy('version: 1\nwindows:\n  w: {from: "1:00", to: "2:00"}\n', "p")
    assert policy.window("w").days == frozenset(range(7))


def test_unquoted_sexagesimal_time_is_read_as_the_clock_time() -> None:
    # YAML 1.1 reads 22:00 as the integer 1320 and 06:00 as a string; both mean the clock time.
    policy = parse_policy("version: 1\nwindows:\n  w: {from: 22:00, to: 06:00}\n", "p")
    assert (policy.window("w").start, policy.window("w").end) == (time(22), time(6))


@pytest.mark.parametrize("word", ["no", "yes", "on", "off"])
def test_yaml11_boolean_where_a_name_was_meant_is_refused_with_a_quote_hint(word: str) -> None:
    issue = only_issue(f"version: 1\nrules:\n  - name: {word}\n")
    assert (issue.line, issue.yaml_path) == (3, "rules[0].name")
    assert "YAML 1.1" in issue.message
    assert f'quote it: "{word}"' in issue.message


def test_quoted_yaml11_boolean_is_a_fine_name() -> None:
    assert parse_policy('version: 1\nrules:\n  - name: "no"\n', "p").rules[0].name == "no"


def test_key_without_a_value_says_so() -> None:
    issue = only_issue("version: 1\ntimezone:\n")
    assert (issue.yaml_path, issue.message) == (
        "timezone",
        "has no value; expected a time zone name (a string)",
    )


def test_octal_looking_integer_is_refused() -> None:
    issue = only_issue("version: 1\ndefaults: {max_concurrent: 010}\n")
    assert issue.yaml_path == "defaults.max_concurrent"
    assert "octal" in issue.message


def test_bare_number_bandwidth_asks_for_a_unit() -> None:
    issue = only_issue("version: 1\ndefaults: {bandwidth: 50}\n")
    assert 'needs a unit, e.g. "50MiB/s"' in issue.message


def test_bare_number_duration_asks_for_a_unit() -> None:
    issue = only_issue("version: 1\ndefaults: {retry: {backoff: 90}}\n")
    assert issue.yaml_path == "defaults.retry.backoff"
    assert 'needs a unit, e.g. "90s"' in issue.message


def test_unknown_window_suggests_the_closest_name() -> None:
    text = 'version: 1\nwindows:\n  nights: {from: "22:00", to: "06:00"}\n'
    text += "rules:\n  - name: a\n  - name: b\n    windows:\n      - nite\n"
    issue = only_issue(text)
    assert str(issue) == (
        'p.yaml:8:9: rules[1].windows[0]: unknown window "nite"; did you mean "nights"?'
    )


def test_unknown_key_suggests_the_closest_key() -> None:
    issue = only_issue("version: 1\ndefaults:\n  bandwith: 1MiB/s\n")
    assert (issue.line, issue.column, issue.yaml_path) == (3, 3, "defaults.bandwith")
    assert issue.message.endswith('did you mean "bandwidth"?')


def test_all_errors_of_a_file_are_reported_at_once_in_file_order() -> None:
    text = (
        "version: 1\n"
        "defaults: {max_concurrent: 0}\n"
        "windows:\n  w: {days: []}\n"
        "rules:\n  - name: a\n    windows: [x]\n  - name: b\n    priority: high\n"
    )
    paths = [(issue.line, issue.yaml_path) for issue in issues_of(text)]
    assert paths == [
        (2, "defaults.max_concurrent"),
        (4, "windows.w.days"),
        (7, "rules[0].windows[0]"),
        (9, "rules[1].priority"),
    ]


def test_unknown_window_is_reported_even_when_another_window_is_invalid() -> None:
    text = "version: 1\nwindows:\n  w: {days: []}\nrules:\n  - {name: a, windows: [v]}\n"
    assert [issue.yaml_path for issue in issues_of(text)] == [
        "windows.w.days",
        "rules[0].windows[0]",
    ]


def test_missing_file_is_a_policy_error_without_position(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "absent.yaml")
    issue = caught.value.errors[0]
    assert (issue.line, issue.column) == (0, 0)
    assert str(issue).startswith(f"{tmp_path / 'absent.yaml'}: cannot read")


def test_non_utf8_file_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\n# gr\xfc\xdfe\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(path)


def test_control_character_is_reported_with_its_position() -> None:
    issue = only_issue("version: 1\nx: \x07\n")
    assert (issue.line, issue.column) == (2, 4)


def test_merge_keys_are_refused() -> None:
    issue = only_issue("version: 1\nrules:\n  - name: a\n    <<: {priority: 1}\n")
    assert "merge keys" in issue.message


def test_aliases_are_followed() -> None:
    text = "version: 1\nrules:\n  - {name: a, domains: &web [web-*]}\n  - {name: b, disks: *web}\n"
    assert parse_policy(text, "p").rules[1].disks == ("web-*",)


def test_deeply_nested_text_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="nested more than 32 levels deep"):
        parse_policy("[" * 100 + "]" * 100, "p")


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [("vd[ab", "unbalanced"), ("", "empty"), ("x[!", "unbalanced"), ("[]", "unbalanced")],
)
def test_glob_problem_finds_unusable_globs(pattern: str, problem: str) -> None:
    assert problem in (glob_problem(pattern) or "")


@pytest.mark.parametrize("pattern", ["vd*", "vd[ab]", "[!x]y", "[]]", "[[]", "a?b", "]"])
def test_glob_problem_accepts_what_fnmatch_reads_as_intended(pattern: str) -> None:
    assert glob_problem(pattern) is None


# -- robustness: arbitrary input raises nothing but PolicyError ----------------------------

POLICY_WORDS = [
    "version", "timezone", "defaults", "windows", "rules", "bandwidth", "max_concurrent",
    "outside_windows", "retry", "max_attempts", "backoff", "max_backoff", "days", "from", "to",
    "name", "domains", "disks", "backing", "exclude", "keep_base", "priority", "action",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "22:00",
            "1:30",
            "mon",
            "daily",
            "pause",
            "ignore",
            "50MiB/s",
            "unlimited",
            "1h",
            "Europe/Berlin",
            "vd[a",
            "0MiB/s",
            "nights",
            "010",
            "no",
            "24:00",
        ]
    ),
)
keys = st.one_of(st.sampled_from(POLICY_WORDS), st.text(max_size=8), st.integers(), st.none())
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)
policy_like = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), scalars)},
    optional={word: documents for word in ["timezone", "defaults", "windows", "rules"]},
)


def assert_only_policy_error(text: str) -> None:
    try:
        parse_policy(text, "fuzz.yaml")
    except PolicyError as error:
        assert error.errors
        assert all(issue.message for issue in error.errors)


@settings(max_examples=300, deadline=None)
@given(st.one_of(documents, policy_like))
def test_arbitrary_yaml_documents_raise_only_policy_error(document: object) -> None:
    assert_only_policy_error(yaml.safe_dump(document, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=string.printable + ":-[]{}&*!|>'\"%@`#")))
def test_arbitrary_text_raises_only_policy_error(text: str) -> None:
    assert_only_policy_error(text)


# -- limits ---------------------------------------------------------------------------------


def rules_text(count: int) -> str:
    return "version: 1\nrules:\n" + "".join(f"  - {{name: r{i}}}\n" for i in range(count))


def test_the_most_rules_allowed_load() -> None:
    assert len(parse_policy(rules_text(MAX_RULES), "p").rules) == MAX_RULES


def test_more_rules_than_allowed_is_one_issue_naming_the_limit() -> None:
    issue = only_issue(rules_text(MAX_RULES + 1))
    assert (issue.line, issue.yaml_path) == (3, "rules")
    assert issue.message == f"{MAX_RULES + 1:,} rules; at most {MAX_RULES:,} are allowed"


def test_more_windows_than_allowed_is_refused() -> None:
    windows = "".join(f"  w{i}: {{days: [mon]}}\n" for i in range(MAX_WINDOWS + 1))
    issue = only_issue(f"version: 1\nwindows:\n{windows}")
    assert issue.yaml_path == "windows"
    assert f"at most {MAX_WINDOWS} are allowed" in issue.message


@pytest.mark.parametrize("key", ["domains", "disks", "backing", "exclude.domains"])
def test_more_globs_in_one_list_than_allowed_is_refused(key: str) -> None:
    globs = ", ".join(f"g{i}" for i in range(MAX_GLOBS + 1))
    value = f"{{domains: [{globs}]}}" if key == "exclude.domains" else f"[{globs}]"
    issue = only_issue(f"version: 1\nrules:\n  - {{name: a, {key.split('.')[0]}: {value}}}\n")
    assert issue.yaml_path == f"rules[0].{key}"
    assert f"at most {MAX_GLOBS} are allowed" in issue.message


def test_policy_reference_states_the_limits() -> None:
    reference = (EXAMPLE.parent / "README.md").read_text()
    for stated in (
        f"{MAX_RULES:,} rules",
        f"{MAX_WINDOWS} windows",
        f"at most {MAX_GLOBS}",
        f"{MAX_FILE_BYTES // 1024**2} MiB",
        f"{MAX_DEPTH} levels",
        f"{MAX_NODES:,} nodes",
        f"{MAX_REPORTED} mistakes",
    ):
        assert stated in reference, stated
