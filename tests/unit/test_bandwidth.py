"""The budget split: slots for foreign jobs first, then an equal bandwidth share per pull."""

from __future__ import annotations

from exporter.core.bandwidth import allocate
from exporter.policy.values import Budget


def test_unlimited_bandwidth_gives_unlimited_share() -> None:
    alloc = allocate(Budget(None, 3), [], running=1, candidates=5)
    assert (alloc.keep, alloc.start, alloc.share) == (1, 2, None)


def test_share_is_budget_divided_by_all_pulls_rounded_down() -> None:
    alloc = allocate(Budget(100, 3), [], running=1, candidates=1)
    assert (alloc.keep, alloc.start, alloc.share) == (1, 1, 50)
    assert allocate(Budget(100, 3), [], running=3, candidates=0).share == 33


def test_foreign_jobs_take_slots_and_their_limits() -> None:
    alloc = allocate(Budget(100, 3), [40], running=0, candidates=5)
    assert (alloc.start, alloc.share) == (2, 30)


def test_foreign_unlimited_job_takes_a_slot_but_no_bandwidth() -> None:
    alloc = allocate(Budget(100, 2), [0], running=0, candidates=5)
    assert (alloc.start, alloc.share) == (1, 100)


def test_extras_beyond_max_concurrent_are_not_kept() -> None:
    alloc = allocate(Budget(None, 2), [0], running=3, candidates=1)
    assert (alloc.keep, alloc.start) == (1, 0)


def test_foreign_jobs_alone_over_the_limit_leave_no_pull() -> None:
    alloc = allocate(Budget(None, 1), [0, 0], running=2, candidates=1)
    assert (alloc.keep, alloc.start) == (0, 0)


def test_fewer_starts_when_a_share_would_drop_below_one_byte() -> None:
    alloc = allocate(Budget(3, 10), [], running=1, candidates=5)
    assert (alloc.keep, alloc.start, alloc.share) == (1, 2, 1)


def test_kept_pulls_stop_when_foreign_limits_eat_the_budget() -> None:
    alloc = allocate(Budget(100, 10), [100], running=2, candidates=1)
    assert (alloc.keep, alloc.start) == (0, 0)


def test_same_pulls_get_the_same_share_after_applying() -> None:
    first = allocate(Budget(1000, 4), [7], running=1, candidates=9)
    again = allocate(Budget(1000, 4), [7], running=first.keep + first.start, candidates=7)
    assert (again.share, again.start) == (first.share, 0)
