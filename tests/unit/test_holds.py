"""Holds as values: which domains a hold covers, until when, and what an unreadable file means."""

import math

from exporter.core.holds import Hold, HoldSet

NOW = 1_000_000.0


def hold(glob: str, until: float = NOW + 3600, reason: str = "backup") -> Hold:
    return Hold(glob, NOW - 10, until, reason, "ops")


def test_a_hold_covers_the_domains_its_glob_matches():
    holds = HoldSet((hold("web-*"),))
    assert holds.holding("web-1", NOW) == hold("web-*")
    assert holds.holding("db-1", NOW) is None


def test_globs_are_case_sensitive_like_the_policy():
    assert HoldSet((hold("web-*"),)).holding("WEB-1", NOW) is None


def test_an_expired_hold_holds_nothing():
    holds = HoldSet((hold("web-*", until=NOW),))
    assert holds.holding("web-1", NOW) is None
    assert holds.in_force(NOW) == ()


def test_of_two_matching_holds_the_longer_one_is_named():
    short, long = hold("web-*", until=NOW + 60), hold("web-1", until=NOW + 600)
    assert HoldSet((short, long)).holding("web-1", NOW) == long


def test_the_next_expiry_is_the_earliest_end_of_a_hold_in_force():
    holds = HoldSet((hold("a", until=NOW - 1), hold("b", until=NOW + 60), hold("c", NOW + 9)))
    assert holds.next_expiry(NOW) == NOW + 9


def test_an_unreadable_holds_file_holds_every_domain_until_it_reads_again():
    holds = HoldSet(error="holds.json: Permission denied")
    found = holds.holding("anything", NOW)
    assert found is not None
    assert "Permission denied" in found.reason
    assert math.isinf(found.until)
    assert holds.next_expiry(NOW) is None


def test_a_hold_describes_itself_with_its_glob_owner_and_reason():
    assert hold("web-*").describe() == "held by `hold web-*` (ops): backup"
    assert hold("web-*", reason="").describe() == "held by `hold web-*` (ops)"
