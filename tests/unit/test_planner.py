"""plan(): one behaviour per test, on values built directly (no YAML, no host)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from builders import (
    BASE,
    MiB,
    apply,
    at,
    disk,
    domain,
    failure,
    ignore,
    job,
    key,
    memory,
    observation,
    policy,
    rule,
    window,
)

from exporter.core.decisions import (
    AbortPull,
    AbortReason,
    DiskDecision,
    DiskState,
    Plan,
    SetSpeed,
    StartPull,
)
from exporter.core.memory import Memory, TrackedJob
from exporter.core.model import Disk, DiskKey, DomainState, JobType, Observation
from exporter.core.planner import backoff_delay, plan
from exporter.policy.values import OutsideWindows, Policy

NOON = at("2024-01-03T12:00")  # a Wednesday
NIGHT = at("2024-01-03T23:00")
NIGHTS = window("nights", start="22:00", end="06:00")
EMPTY = Memory()


def run(obs: Observation, pol: Policy, now: datetime = NOON, mem: Memory = EMPTY) -> Plan:
    return plan(obs, pol, now, mem)


def decision(result: Plan, k: DiskKey) -> DiskDecision:
    (found,) = (d for d in result.decisions if d.key == k)
    return found


def state(result: Plan, k: DiskKey) -> DiskState:
    return decision(result, k).state


def starts(result: Plan) -> list[DiskKey]:
    return [a.key for a in result.actions if isinstance(a, StartPull)]


# -- selection ------------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    pol = policy(rule("web", domains=("web-*",), priority=5), rule("rest", priority=1))
    result = run(observation(domain("web-1"), domain("db-1")), pol)
    assert decision(result, key("web-1")).rule == "web"
    assert decision(result, key("web-1")).priority == 5
    assert decision(result, key("db-1")).rule == "rest"


def test_disk_no_rule_selects_is_ignored_with_rule_none() -> None:
    result = run(observation(domain("db-1")), policy(rule(domains=("web-*",))))
    assert decision(result, key("db-1")).rule is None
    assert state(result, key("db-1")) is DiskState.IGNORED
    assert result.actions == ()


def test_ignored_rule_never_touches_a_running_job() -> None:
    obs = observation(domain("db-1", disk(job=job(bandwidth=None))))
    pol = policy(ignore("db", domains=("db-*",)), rule("rest"), bandwidth=MiB, max_concurrent=0)
    result = run(obs, pol)
    assert result.actions == ()
    assert state(result, key("db-1")) is DiskState.IGNORED
    assert decision(result, key("db-1")).rule == "db"


def test_job_on_a_disk_no_rule_selects_is_never_aborted() -> None:
    obs = observation(domain("db-1", disk(job=job())), domain("web-1", disk(job=job())))
    pol = policy(rule("web", domains=("web-*",)), max_concurrent=1)
    result = run(obs, pol)
    assert result.actions == (AbortPull(key("web-1"), AbortReason.OVER_BUDGET),)


# -- per-disk states ------------------------------------------------------------------------


@pytest.mark.parametrize("domain_state", [DomainState.SHUTOFF, DomainState.OTHER])
def test_domain_not_running_is_not_running(domain_state: DomainState) -> None:
    result = run(observation(domain("vm", state=domain_state)), policy())
    assert state(result, key("vm")) is DiskState.NOT_RUNNING
    assert result.actions == ()


def test_paused_domain_can_be_pulled() -> None:
    result = run(observation(domain("vm", state=DomainState.PAUSED)), policy())
    assert starts(result) == [key("vm")]


@pytest.mark.parametrize(
    "odd_disk",
    [disk(readonly=True), disk(transient=True), disk(source=None)],
    ids=["readonly", "transient", "no-source"],
)
def test_unsupported_disk_is_never_started(odd_disk: Disk) -> None:
    result = run(observation(domain("vm", odd_disk)), policy())
    assert state(result, key("vm")) is DiskState.UNSUPPORTED
    assert result.actions == ()


def test_keep_base_not_in_chain_is_unsupported() -> None:
    result = run(
        observation(domain("vm", disk(chain=("/other.qcow2",)))), policy(rule(keep_base="/t/*"))
    )
    assert state(result, key("vm")) is DiskState.UNSUPPORTED
    assert "keep_base" in decision(result, key("vm")).reason


def test_keep_base_pulls_down_to_the_nearest_matching_image() -> None:
    obs = observation(domain("vm", disk(chain=("/o/mid.qcow2", "/t/a.qcow2", "/t/b.qcow2"))))
    result = run(obs, policy(rule(keep_base="/t/*")))
    (start,) = result.actions
    assert isinstance(start, StartPull)
    assert start.base == "/t/a.qcow2"


def test_full_pull_has_no_base() -> None:
    (start,) = run(observation(domain("vm")), policy()).actions
    assert isinstance(start, StartPull)
    assert start.base is None


def test_disk_resting_on_its_kept_base_is_independent() -> None:
    obs = observation(domain("vm", disk(chain=("/t/a.qcow2", "/t/b.qcow2"))))
    result = run(obs, policy(rule(keep_base="/t/*")))
    assert state(result, key("vm")) is DiskState.INDEPENDENT
    assert result.actions == ()


def test_disk_without_backing_chain_is_independent() -> None:
    result = run(observation(domain("vm", disk(chain=()))), policy())
    assert state(result, key("vm")) is DiskState.INDEPENDENT


def test_running_pull_on_a_disk_with_nothing_left_stays_pulling() -> None:
    result = run(observation(domain("vm", disk(chain=(), job=job()))), policy())
    assert state(result, key("vm")) is DiskState.PULLING
    assert result.actions == ()


def test_pull_started_by_hand_is_adopted_and_throttled() -> None:
    obs = observation(domain("vm", disk(job=job(bandwidth=None))))
    result = run(obs, policy(bandwidth=10 * MiB))
    assert state(result, key("vm")) is DiskState.PULLING
    assert result.actions == (SetSpeed(key("vm"), 10 * MiB, result.actions[0].reason),)


def test_disk_busy_with_another_job_is_pending_and_untouched() -> None:
    obs = observation(domain("vm", disk(job=job(JobType.COPY, bandwidth=5))))
    result = run(obs, policy(bandwidth=1))
    assert state(result, key("vm")) is DiskState.PENDING
    assert decision(result, key("vm")).reason == "busy with a copy job"
    assert result.actions == ()


def test_depth_is_the_chain_length() -> None:
    result = run(observation(domain("vm", disk(chain=("/a", "/b", "/c")))), policy())
    assert decision(result, key("vm")).depth == 3


# -- failures -------------------------------------------------------------------------------


def test_disk_in_backoff_is_not_started() -> None:
    obs, pol = observation(domain("vm")), policy(backoff=60)
    mem = memory(failure(obs, key("vm"), pol, count=1, at=NOON - timedelta(seconds=30)))
    result = run(obs, pol, NOON, mem)
    assert state(result, key("vm")) is DiskState.BACKOFF
    assert decision(result, key("vm")).next_attempt_at == NOON + timedelta(seconds=30)
    assert decision(result, key("vm")).consecutive_failures == 1
    assert result.actions == ()


def test_disk_is_retried_when_backoff_expires() -> None:
    obs, pol = observation(domain("vm")), policy(backoff=60)
    mem = memory(failure(obs, key("vm"), pol, count=1, at=NOON - timedelta(seconds=60)))
    assert starts(run(obs, pol, NOON, mem)) == [key("vm")]


def test_backoff_doubles_up_to_max_backoff() -> None:
    pol = policy(backoff=60, max_backoff=300)
    delays = [backoff_delay(pol.defaults.retry, n) for n in range(1, 6)]
    assert delays == [60, 120, 240, 300, 300]


def test_backoff_of_a_huge_failure_count_is_the_cap() -> None:
    assert backoff_delay(policy(max_backoff=300).defaults.retry, 10**6) == 300


def test_gave_up_after_max_attempts() -> None:
    obs, pol = observation(domain("vm")), policy(max_attempts=3)
    mem = memory(failure(obs, key("vm"), pol, count=3, at=NOON - timedelta(days=1)))
    result = run(obs, pol, NOON, mem)
    assert state(result, key("vm")) is DiskState.GAVE_UP
    assert result.actions == ()


def test_gave_up_resets_when_policy_changes() -> None:
    obs, pol = observation(domain("vm")), policy(max_attempts=3)
    mem = memory(failure(obs, key("vm"), pol, count=3, at=NOON))
    result = run(obs, policy(max_attempts=3, fingerprint="policy-2"), NOON, mem)
    assert starts(result) == [key("vm")]
    assert decision(result, key("vm")).consecutive_failures == 0


def test_gave_up_resets_when_disk_changes() -> None:
    before, pol = observation(domain("vm")), policy(max_attempts=3)
    mem = memory(failure(before, key("vm"), pol, count=3, at=NOON))
    after = observation(domain("vm", disk(chain=("/new-base.qcow2",))))
    assert starts(run(after, pol, NOON, mem)) == [key("vm")]


# -- windows --------------------------------------------------------------------------------


def test_rule_with_closed_windows_waits() -> None:
    result = run(observation(domain("vm")), policy(rule(windows=("nights",)), windows=[NIGHTS]))
    assert state(result, key("vm")) is DiskState.WAITING_WINDOW
    assert result.actions == ()


def test_rule_starts_when_its_window_opens() -> None:
    pol = policy(rule(windows=("nights",)), windows=[NIGHTS])
    assert starts(run(observation(domain("vm")), pol, NIGHT)) == [key("vm")]


def test_outside_windows_pause_aborts_running_pull() -> None:
    obs = observation(domain("vm", disk(job=job())))
    pol = policy(rule(windows=("nights",)), windows=[NIGHTS])
    result = run(obs, pol)
    assert result.actions == (AbortPull(key("vm"), AbortReason.WINDOW_CLOSED),)
    assert state(result, key("vm")) is DiskState.WAITING_WINDOW


def test_finish_keeps_running_pull_but_starts_none() -> None:
    obs = observation(domain("a", disk(job=job())), domain("b"))
    pol = policy(rule(windows=("nights",)), windows=[NIGHTS], outside_windows=OutsideWindows.FINISH)
    result = run(obs, pol)
    assert result.actions == ()
    assert state(result, key("a")) is DiskState.PULLING
    assert state(result, key("b")) is DiskState.WAITING_WINDOW


def test_open_window_budget_is_in_force() -> None:
    nights = window("nights", start="22:00", end="06:00", bandwidth=None, max_concurrent=3)
    pol = policy(windows=[nights], bandwidth=MiB, max_concurrent=1)
    obs = observation(*(domain(f"vm{i}") for i in range(4)))
    result = run(obs, pol, NIGHT)
    assert result.open_windows == frozenset({"nights"})
    assert result.budget.bandwidth is None
    assert [a.bandwidth for a in result.actions if isinstance(a, StartPull)] == [None] * 3


def test_next_wake_is_the_next_window_boundary_or_backoff_expiry() -> None:
    obs, pol = observation(domain("vm")), policy(windows=[NIGHTS], backoff=60)
    assert run(obs, pol).next_wake == at("2024-01-03T22:00")
    mem = memory(failure(obs, key("vm"), pol, count=1, at=NOON))
    assert run(obs, pol, NOON, mem).next_wake == NOON + timedelta(seconds=60)


def test_nothing_timed_means_no_wake() -> None:
    assert run(observation(domain("vm")), policy()).next_wake is None


# -- budget ---------------------------------------------------------------------------------


def test_order_is_priority_then_domain_then_disk() -> None:
    obs = observation(domain("b", disk("vdb"), disk("vda")), domain("a"), domain("z-important"))
    pol = policy(rule("vip", domains=("z-*",), priority=9), rule("rest"), max_concurrent=10)
    assert starts(run(obs, pol)) == [key("z-important"), key("a"), key("b")]


def test_one_pull_per_domain_at_a_time() -> None:
    obs = observation(domain("b", disk("vda"), disk("vdb")), domain("a"))
    result = run(obs, policy(rule("all"), max_concurrent=10))
    assert starts(result) == [key("a"), key("b")]
    assert decision(result, key("b", "vdb")).state is DiskState.PENDING


def test_a_domain_with_a_running_pull_gets_no_second_one() -> None:
    running = disk("vda", job=job(bandwidth=MiB))
    obs = observation(domain("b", running, disk("vdb")))
    result = run(obs, policy(rule("all"), max_concurrent=10, bandwidth=MiB))
    assert starts(result) == []


def test_only_max_concurrent_pulls_start_best_first() -> None:
    obs = observation(domain("c"), domain("a"), domain("b"))
    result = run(obs, policy(max_concurrent=2))
    assert starts(result) == [key("a"), key("b")]
    assert state(result, key("c")) is DiskState.PENDING


def test_budget_is_split_evenly_and_resplit_when_a_pull_ends() -> None:
    obs = observation(domain("a"), domain("b"), domain("c"))
    pol = policy(bandwidth=90, max_concurrent=3)
    first = run(obs, pol)
    assert [a.bandwidth for a in first.actions] == [30, 30, 30]
    done = apply(obs, first.actions)
    finished = observation(domain("a", disk(chain=())), *done.domains[1:])
    second = run(finished, pol)
    assert [(a.key, a.bandwidth) for a in second.actions] == [(key("b"), 45), (key("c"), 45)]
    assert all(isinstance(a, SetSpeed) for a in second.actions)


def test_foreign_job_counts_against_budget() -> None:
    foreign = domain("backup", disk(job=job(JobType.BACKUP, bandwidth=40)))
    obs = observation(foreign, domain("a"), domain("b"))
    pol = policy(rule(domains=("[ab]",)), bandwidth=100, max_concurrent=2)
    result = run(obs, pol)
    assert [(a.key, a.bandwidth) for a in result.actions] == [(key("a"), 60)]


def test_foreign_unlimited_job_takes_a_slot_but_no_bandwidth() -> None:
    obs = observation(domain("x", disk(job=job(JobType.COMMIT))), domain("a"), domain("b"))
    pol = policy(rule(domains=("[ab]",)), bandwidth=100, max_concurrent=2)
    assert [(a.key, a.bandwidth) for a in run(obs, pol).actions] == [(key("a"), 100)]


def test_lowered_max_concurrent_aborts_extras() -> None:
    obs = observation(*(domain(n, disk(job=job())) for n in ("a", "b", "c")))
    result = run(obs, policy(rule("low"), max_concurrent=1))
    assert result.actions == (
        AbortPull(key("b"), AbortReason.OVER_BUDGET),
        AbortPull(key("c"), AbortReason.OVER_BUDGET),
    )
    assert state(result, key("b")) is DiskState.PENDING


def test_lowest_priority_pull_is_the_one_aborted() -> None:
    obs = observation(domain("a", disk(job=job())), domain("b", disk(job=job())))
    pol = policy(rule("vip", domains=("b",), priority=5), rule("rest"), max_concurrent=1)
    assert run(obs, pol).actions == (AbortPull(key("a"), AbortReason.OVER_BUDGET),)


def test_running_pull_is_not_aborted_for_a_higher_priority_candidate() -> None:
    obs = observation(domain("a", disk(job=job())), domain("b"))
    pol = policy(rule("vip", domains=("b",), priority=5), rule("rest"), max_concurrent=1)
    result = run(obs, pol)
    assert result.actions == ()
    assert state(result, key("b")) is DiskState.PENDING


def test_unlimited_budget_lifts_the_limit_of_running_pulls() -> None:
    obs = observation(domain("a", disk(job=job(bandwidth=5))))
    result = run(obs, policy(bandwidth=None))
    assert [(type(a), a.bandwidth) for a in result.actions] == [(SetSpeed, None)]


def test_speed_cuts_come_before_starts_and_raises_after() -> None:
    # "a" runs unlimited (cut to the share), "b" runs slowly (raised), "c" starts.
    obs = observation(
        domain("a", disk(job=job(bandwidth=None))),
        domain("b", disk(job=job(bandwidth=1))),
        domain("c"),
    )
    result = run(obs, policy(bandwidth=300, max_concurrent=3))
    assert [(type(a), a.key, a.bandwidth) for a in result.actions] == [
        (SetSpeed, key("a"), 100),
        (StartPull, key("c"), 100),
        (SetSpeed, key("b"), 100),
    ]


def test_aborts_come_first() -> None:
    obs = observation(domain("a", disk(job=job(bandwidth=1))), domain("b", disk(job=job())))
    pol = policy(
        rule("night", domains=("b",), windows=("nights",)), rule("rest"),
        windows=[NIGHTS], bandwidth=10,
    )  # fmt: skip
    result = run(obs, pol)
    assert [type(a) for a in result.actions] == [AbortPull, SetSpeed]


def test_bandwidth_too_small_for_another_pull_starts_none() -> None:
    obs = observation(domain("a", disk(job=job(bandwidth=1))), domain("b"))
    result = run(obs, policy(bandwidth=1, max_concurrent=5))
    assert result.actions == ()
    assert state(result, key("b")) is DiskState.PENDING


# -- whole plan -----------------------------------------------------------------------------


def test_every_disk_has_one_decision_sorted_by_key() -> None:
    obs = observation(domain("b", disk("vdb"), disk("vda")), domain("a"))
    keys = [d.key for d in run(obs, policy(rule(domains=("a",)))).decisions]
    assert keys == [key("a"), key("b"), key("b", "vdb")]


def test_plan_is_idempotent_after_applying_actions() -> None:
    obs = observation(
        domain("a", disk(job=job(bandwidth=None))),
        domain("b", disk(job=job(bandwidth=7))),
        domain("c", disk("vda"), disk("vdb")),
        domain("x", disk(job=job(JobType.BACKUP, bandwidth=100))),
    )
    pol = policy(bandwidth=1000, max_concurrent=4)
    first = run(obs, pol)
    assert first.actions
    assert run(apply(obs, first.actions), pol).actions == ()


def test_plan_is_deterministic() -> None:
    obs = observation(*(domain(f"vm{i}", disk(chain=(BASE,))) for i in range(20)))
    pol = policy(bandwidth=1000, max_concurrent=3)
    assert run(obs, pol) == run(obs, pol)


def test_a_tracked_pull_whose_outcome_is_unproven_is_not_started_again():
    pol = policy(rule("web", domains=("web-*",)))
    obs = observation(domain("web-1", disk("vda", chain=(BASE,))))
    tracked = Memory(tracked={key("web-1"): TrackedJob(None, 0.0, (BASE,))})
    result = plan(obs, pol, NOON, tracked)
    assert result.actions == ()
    assert result.decisions[0].state is DiskState.PENDING
