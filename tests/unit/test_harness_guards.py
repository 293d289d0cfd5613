"""The test harness's own guards (tests/harness): libvirtd is shared with other engineers'
suites, so a test daemon's policy and a clean-up must only ever reach what the run made."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.libvirt_lab import remove_domain, stop_domain
from harness.own_names import require_own_policy, unique_name, unique_prefix
from harness.policy_files import policy, policy_for_domains, retry, rule, write_policy

from exporter.policy.loader import load_policy


def _written(tmp_path: Path, text: str) -> Path:
    return write_policy(tmp_path / "policy.yaml", text)


def test_a_policy_naming_own_domains_or_an_own_prefix_passes(tmp_path: Path) -> None:
    exact = unique_name("web")
    prefixed = unique_prefix("bench") + "c*"
    require_own_policy(_written(tmp_path, policy(rule("mine", [exact, prefixed]))))


@pytest.mark.parametrize("glob", ["*", "web-*", "bpx-test-*", "bpx-test-1234567*", "bpx-*-x"])
def test_a_glob_that_may_select_foreign_domains_is_refused(tmp_path: Path, glob: str) -> None:
    path = _written(tmp_path, policy(rule("mine", [unique_name("a"), glob])))
    with pytest.raises(ValueError, match="may select foreign domains"):
        require_own_policy(path)


def test_an_ignore_rule_is_held_to_the_same_names(tmp_path: Path) -> None:
    path = _written(tmp_path, policy(rule("hands-off", ["db-*"], action="ignore")))
    with pytest.raises(ValueError, match="hands-off"):
        require_own_policy(path)


@pytest.mark.parametrize("clean_up", [remove_domain, stop_domain])
def test_a_clean_up_refuses_a_domain_the_run_did_not_make(clean_up: object) -> None:
    with pytest.raises(ValueError, match="not touching it"):
        clean_up(None, "web-1")  # type: ignore[operator]  # refused before any libvirt call


def test_the_policy_writer_writes_what_the_loader_reads(tmp_path: Path) -> None:
    name = unique_name("w")
    text = policy(
        rule("mine", [name], keep_base="/images/t/*-base.qcow2", windows=["ten"]),
        bandwidth="4MiB/s",
        max_concurrent=3,
        retry=retry(2, "1s", "2s"),
        windows={"ten": {"days": "daily", "from": "10:00", "to": "10:01"}},
    )
    loaded = load_policy(_written(tmp_path, text))
    [mine] = loaded.rules
    assert (mine.name, mine.domains, mine.keep_base) == ("mine", (name,), "/images/t/*-base.qcow2")
    assert loaded.defaults.budget.max_concurrent == 3
    assert loaded.defaults.budget.bandwidth == 4 * 1024 * 1024
    assert (loaded.defaults.retry.max_attempts, loaded.defaults.retry.backoff) == (2, 1.0)
    assert [w.name for w in loaded.windows] == ["ten"]


def test_the_subprocess_suites_policy_names_exactly_its_domains(tmp_path: Path) -> None:
    names = [unique_name("a"), unique_name("b")]
    loaded = load_policy(_written(tmp_path, policy_for_domains(names, window="always")))
    [only] = loaded.rules
    assert only.domains == tuple(names)
    assert only.windows == ("always",)
