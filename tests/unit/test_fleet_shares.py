"""How a shared group's slots and bandwidth are divided (exporter.fleet.shares)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exporter.fleet.shares import pull_share, slot_cap, water_level


def test_demand_that_fits_is_met_in_full() -> None:
    assert water_level([1, 2, 3], 8) == (3, 2)


def test_slots_are_shared_fairly_between_unequal_demands() -> None:
    level, leftover = water_level([1, 10], 8)
    assert [slot_cap(d, level, leftover) for d in (1, 10)] == [1, 7]


def test_leftover_slots_are_open_to_every_host_at_the_level() -> None:
    level, leftover = water_level([3, 3, 3, 3], 3)  # fewer slots than hosts
    assert (level, leftover) == (0, 3)
    assert slot_cap(3, level, leftover) == 1


def test_no_demand_no_slots() -> None:
    assert slot_cap(0, *water_level([0, 5], 4)) == 0


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 64))
def test_caps_at_the_level_never_exceed_the_slots(demands: list[int], slots: int) -> None:
    level, leftover = water_level(demands, slots)
    assert sum(min(d, level) for d in demands) + leftover == slots
    assert leftover >= 0
    assert all(slot_cap(d, level, leftover) <= d for d in demands)


def test_bandwidth_is_split_by_the_pulls_the_group_can_run() -> None:
    assert pull_share(800, 8, 2) == 400  # two pulls wanted: half each
    assert pull_share(800, 8, 50) == 100  # more wanted than slots: one slot's worth each


def test_unlimited_group_bandwidth_gives_unlimited_shares() -> None:
    assert pull_share(None, 8, 3) is None


@given(st.integers(1, 10**12), st.integers(1, 64), st.integers(0, 10**4))
def test_every_slot_at_its_share_fits_the_bandwidth(
    bandwidth: int, limit: int, demand: int
) -> None:
    share = pull_share(bandwidth, limit, demand)
    assert share is not None
    if bandwidth >= limit:  # below one byte/s per slot, libvirt's minimum of 1 wins
        assert share * min(limit, max(demand, 1)) <= bandwidth
