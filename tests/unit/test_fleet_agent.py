"""The fleet agent against the in-memory coordination service: rounds run by hand, time is a
ManualClock, so lease expiry is exact and nothing waits."""

from __future__ import annotations

import math

import pytest

from exporter.core.clock import ManualClock
from exporter.core.coordinator import CoordinationChanged
from exporter.core.shared import NOTHING, GroupAllowance, GroupUse
from exporter.fleet.agent import FleetAgent, hold_margin
from exporter.fleet.memory import MemoryService
from exporter.policy.values import SharedGroup

TTL = 30.0
GROUP = SharedGroup("filer-a", ("/mnt/filer-a/*",), 800, 2)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def service(clock: ManualClock) -> MemoryService:
    return MemoryService(clock, TTL)


def agent(service: MemoryService, name: str, demand: int = 0, pulls: int = 0) -> FleetAgent:
    member = FleetAgent(service.session, name, TTL, service.clock)
    want(member, demand, pulls)
    return member


def want(member: FleetAgent, demand: int, pulls: int = 0) -> None:
    member.report((GROUP,), (GroupUse(GROUP.name, pulls, 0, demand),))


def allowance(member: FleetAgent, clock: ManualClock) -> GroupAllowance:
    return member.allowances(clock.monotonic())[GROUP.name]


def rounds(*members: FleetAgent, times: int = 1) -> None:
    for _ in range(times):
        for member in members:
            member.round()


def test_before_its_first_round_a_group_keeps_running_pulls_and_starts_none(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=2)
    assert allowance(member, clock) == GroupAllowance(2, 400, may_start=False)


def test_slots_across_hosts_never_exceed_max_concurrent(
    service: MemoryService, clock: ManualClock
) -> None:
    members = [agent(service, name, demand=2) for name in "abc"]
    for _ in range(5):
        rounds(*members)
        held = [allowance(m, clock).slots for m in members]
        assert sum(held) <= GROUP.max_concurrent
        assert len(service.holders(GROUP.name)) == sum(held)
    assert sum(held) == GROUP.max_concurrent


def test_a_host_gives_back_idle_slots_beyond_its_fair_share(
    service: MemoryService, clock: ManualClock
) -> None:
    first = agent(service, "a", demand=2)
    rounds(first)
    assert allowance(first, clock).slots == 2
    second = agent(service, "b", demand=2)
    rounds(second, first, second)
    assert [allowance(m, clock).slots for m in (first, second)] == [1, 1]


def test_slots_in_use_are_kept_while_nobody_else_waits(
    service: MemoryService, clock: ManualClock
) -> None:
    first = agent(service, "a", demand=2, pulls=2)
    rounds(first)
    idle = agent(service, "b", demand=0)
    rounds(idle, first, times=3)
    assert allowance(first, clock).slots == 2


def test_slots_in_use_above_the_fair_cap_are_given_back_one_a_round(
    service: MemoryService, clock: ManualClock
) -> None:
    first = agent(service, "a", demand=2, pulls=2)
    rounds(first)
    second = agent(service, "b", demand=2)
    rounds(second, first)
    assert allowance(first, clock).slots == 1  # the planner stops one of its pulls
    rounds(second)
    assert allowance(second, clock).slots == 1


def test_new_demand_takes_a_slot_only_once_the_others_could_see_it(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=0)
    rounds(member)
    want(member, demand=1)
    rounds(member)
    assert allowance(member, clock).slots == 0  # published this round
    rounds(member)
    assert allowance(member, clock).slots == 1


def test_bandwidth_is_shared_by_the_pulls_the_group_runs(
    service: MemoryService, clock: ManualClock
) -> None:
    first = agent(service, "a", demand=1)
    rounds(first)
    assert allowance(first, clock).share == 800
    second = agent(service, "b", demand=1)
    rounds(second, first)
    assert allowance(first, clock).share == allowance(second, clock).share == 400


def test_a_dead_hosts_slots_pass_on_within_the_lease_ttl(
    service: MemoryService, clock: ManualClock
) -> None:
    dead = agent(service, "dead", demand=2, pulls=2)
    alive = agent(service, "alive", demand=2)
    rounds(dead, alive)
    assert allowance(alive, clock).slots == 0
    for _ in range(int(TTL)):  # the dead host runs no more rounds
        clock.advance(1.0)
        rounds(alive)
    assert allowance(alive, clock).slots == 2


def test_unreachable_service_keeps_slots_but_starts_nothing(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=1, pulls=1)
    rounds(member)
    service.reachable = False
    clock.advance(1.0)
    rounds(member)
    assert allowance(member, clock) == GroupAllowance(1, 800, may_start=False)
    assert member.status().up is False


def test_group_pulls_stop_before_the_lease_can_have_expired(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=1, pulls=1)
    rounds(member)
    service.reachable = False
    end = member.lease_end(clock.monotonic())
    assert end == pytest.approx(clock.monotonic() + TTL - hold_margin(TTL))
    clock.advance(end - clock.monotonic())
    assert allowance(member, clock) == NOTHING
    assert member.lease_end(clock.monotonic()) == math.inf  # no timer left to wake anyone


def test_a_host_takes_part_again_when_the_service_answers(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=1)
    rounds(member)
    service.reachable = False
    clock.advance(TTL)
    rounds(member)
    assert allowance(member, clock) == NOTHING
    service.reachable = True
    rounds(member)
    assert allowance(member, clock).slots == 1
    assert member.status().up is True


def test_heartbeats_keep_the_lease_of_a_live_host(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=1, pulls=1)
    rounds(member)
    first_holders = service.holders(GROUP.name)
    for _ in range(int(3 * TTL)):
        clock.advance(1.0)
        rounds(member)
    assert service.holders(GROUP.name) == first_holders  # the same member, never expired
    assert allowance(member, clock).slots == 1


def test_a_group_removed_from_the_policy_is_left_and_its_slots_released(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=2)
    rounds(member)
    member.report((), ())
    rounds(member)
    assert service.holders(GROUP.name) == {}
    assert member.allowances(clock.monotonic()) == {}


def test_the_controller_is_woken_after_every_round_saying_whether_allowances_changed(
    service: MemoryService, clock: ManualClock
) -> None:
    member = agent(service, "a", demand=1)
    wakes: list[object] = []
    member.subscribe(wakes.append)
    rounds(member)
    assert wakes == [CoordinationChanged(allowances=True)]
    rounds(member)
    assert wakes[-1] == CoordinationChanged(allowances=False)  # only its status changed
