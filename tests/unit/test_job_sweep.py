"""The block-job sweep's schedule: all at once after a connection, then spread out."""

from __future__ import annotations

import itertools

import pytest

from exporter.hosts.libvirt.job_sweep import JobSweep


def test_the_first_observe_reads_every_part() -> None:
    assert JobSweep(300.0, parts=10).due(0.0) == frozenset(range(10))


def test_after_a_full_sweep_the_parts_fall_due_one_share_of_the_interval_apart() -> None:
    sweep = JobSweep(300.0, parts=10)
    sweep.due(0.0)
    assert [sweep.due(30.0 * step) for step in range(1, 11)] == [
        frozenset({part}) for part in range(10)
    ]


def test_observes_every_thirty_seconds_read_each_part_once_per_interval() -> None:
    sweep = JobSweep(300.0, parts=10)
    read_at: dict[int, list[float]] = {part: [] for part in range(10)}
    for step in range(121):  # an hour
        now = 30.0 * step
        for part in sweep.due(now):
            read_at[part].append(now)
    after_the_first = [times[1:] for times in read_at.values()]
    gaps = {b - a for times in after_the_first for a, b in itertools.pairwise(times)}
    assert gaps == {300.0}


def test_frequent_observes_read_nothing_between_due_times() -> None:
    sweep = JobSweep(300.0, parts=10)
    sweep.due(0.0)
    assert sweep.due(0.5) == frozenset() and sweep.due(29.9) == frozenset()


def test_observes_further_apart_than_the_interval_read_everything_each_time() -> None:
    sweep = JobSweep(300.0, parts=10)
    assert [len(sweep.due(now)) for now in (0.0, 400.0, 800.0)] == [10, 10, 10]


def test_a_restart_makes_every_part_due_again() -> None:
    sweep = JobSweep(300.0, parts=10)
    sweep.due(0.0)
    sweep.restart()
    assert sweep.due(1.0) == frozenset(range(10))


def test_a_domain_keeps_its_part() -> None:
    uuid = "5a97b5ea-8b78-46b7-bc38-d62ecc2ca0db"
    assert JobSweep(300.0).part(uuid) == JobSweep(60.0).part(uuid) in range(10)


def test_domains_spread_over_the_parts() -> None:
    sweep = JobSweep(300.0, parts=10)
    parts = [sweep.part(f"00000000-0000-0000-0000-{n:012d}") for n in range(1000)]
    assert min(parts.count(part) for part in range(10)) > 50


def test_a_sweep_without_parts_is_refused() -> None:
    with pytest.raises(ValueError, match="parts >= 1"):
        JobSweep(300.0, parts=0)
