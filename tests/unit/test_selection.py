"""Rule selection: first matching rule wins, fnmatchcase globs on domain, target and chain."""

from __future__ import annotations

from builders import BASE, disk, ignore, rule

from exporter.core.model import Disk
from exporter.core.selection import compile_globs, select_rule, selector_for
from exporter.policy.values import Rule


def selected(rules: tuple[Rule, ...], domain: str, d: Disk) -> str | None:
    match = select_rule(rules, domain, d)
    return match.name if match is not None else None


def test_first_matching_rule_in_policy_order_wins() -> None:
    rules = (rule("specific", domains=("web-1",)), rule("broad", domains=("web-*",)))
    assert selected(rules, "web-1", disk()) == "specific"
    assert selected(rules, "web-2", disk()) == "broad"


def test_no_matching_rule_selects_nothing() -> None:
    assert selected((rule(domains=("db-*",)),), "web-1", disk()) is None


def test_excluded_domain_falls_through_to_the_next_rule() -> None:
    rules = (rule("web", domains=("web-*",), exclude_domains=("web-canary*",)), rule("rest"))
    assert selected(rules, "web-canary-1", disk()) == "rest"


def test_disk_globs_and_exclusions_apply_to_the_target() -> None:
    rules = (rule("virtio", disks=("vd*",), exclude_disks=("vdz",)),)
    assert selected(rules, "d", disk("vdb")) == "virtio"
    assert selected(rules, "d", disk("vdz")) is None
    assert selected(rules, "d", disk("sda")) is None


def test_globs_are_case_sensitive() -> None:
    assert selected((rule(domains=("Web-*",)),), "web-1", disk()) is None


def test_backing_glob_matches_any_image_of_the_chain() -> None:
    rules = (rule("tpl", backing=("/templates/*",)),)
    deep = disk(chain=("/overlays/mid.qcow2", "/templates/base.qcow2"))
    assert selected(rules, "d", deep) == "tpl"


def test_backing_glob_never_matches_an_independent_disk() -> None:
    assert selected((rule(backing=("*",)),), "d", disk(chain=())) is None


def test_backing_glob_does_not_look_at_the_top_image() -> None:
    rules = (rule(backing=("/templates/*",)),)
    assert selected(rules, "d", disk(source="/templates/top.qcow2", chain=("/x.qcow2",))) is None


def test_empty_include_lists_match_everything() -> None:
    assert selected((rule(domains=(), disks=()),), "any", disk("sdq")) == "all"


def test_ignore_rule_is_selected_like_any_other() -> None:
    rules = (ignore("db", domains=("db-*",)), rule("rest"))
    assert selected(rules, "db-1", disk()) == "db"


def test_star_crosses_slashes_like_fnmatch() -> None:
    rules = (rule(backing=("/var/*.qcow2",)),)
    assert selected(rules, "d", disk(chain=("/var/a/b.qcow2",))) == "all"


def test_bracket_and_question_mark_globs_work() -> None:
    rules = (rule(disks=("vd[ab]", "sd?")),)
    assert selected(rules, "d", disk("vdb")) == "all"
    assert selected(rules, "d", disk("sdc")) == "all"
    assert selected(rules, "d", disk("vdc")) is None


def test_regex_metacharacters_in_globs_are_literal() -> None:
    rules = (rule(domains=("web.1+(a)",)),)
    assert selected(rules, "web.1+(a)", disk()) == "all"
    assert selected(rules, "webx1+(a)", disk()) is None


def test_glob_list_compiles_once_per_pattern_tuple() -> None:
    assert compile_globs(("a*", "b?")) is compile_globs(("a*", "b?"))


def test_selector_is_cached_per_rule_list() -> None:
    rules = (rule("a"), rule("b"))
    assert selector_for(rules) is selector_for((rule("a"), rule("b")))


def test_keep_base_is_the_nearest_matching_image() -> None:
    compiled = selector_for((rule(keep_base="/t/*"),)).rules[0]
    assert compiled.base_in(("/o/mid", "/t/near", "/t/far")) == "/t/near"
    assert compiled.base_in(("/o/mid",)) is None


def test_no_keep_base_means_no_base() -> None:
    compiled = selector_for((rule(),)).rules[0]
    assert compiled.base_in((BASE,)) is None
