"""plan() and the production guards: holds, free space, one pull per domain read in full,
and the daemon's own pulls given up when a reload deselects them or somebody aborts them."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from builders import (
    BASE,
    IMAGES,
    MiB,
    apply,
    at,
    disk,
    domain,
    ignore,
    inspected,
    job,
    key,
    observation,
    policy,
    rule,
)

from exporter.core.decisions import AbortPull, AbortReason, DiskDecision, DiskState, Plan, StartPull
from exporter.core.holds import Hold, HoldSet
from exporter.core.memory import Failures, Memory, TrackedJob
from exporter.core.model import (
    ChainUsage,
    DiskKey,
    FileSystem,
    JobType,
    Observation,
    Unmeasured,
)
from exporter.core.planner import plan
from exporter.policy.values import MinFree, Policy

NOON = at("2024-01-03T12:00")
GiB = 1024 * MiB
POOL = FileSystem(mountpoint="/var/lib/libvirt/images", size=100 * GiB, free=50 * GiB)
NO_HOLDS = HoldSet()


def run(
    obs: Observation,
    pol: Policy | None = None,
    mem: Memory | None = None,
    holds: HoldSet = NO_HOLDS,
    now: datetime = NOON,
) -> Plan:
    return plan(obs, pol or policy(), now, mem or Memory(), holds=holds)


def decision(result: Plan, k: DiskKey) -> DiskDecision:
    (found,) = (d for d in result.decisions if d.key == k)
    return found


def starts(result: Plan) -> list[StartPull]:
    return [a for a in result.actions if isinstance(a, StartPull)]


def aborts(result: Plan) -> list[AbortPull]:
    return [a for a in result.actions if isinstance(a, AbortPull)]


def held(glob: str, minutes: float = 60, reason: str = "backup") -> HoldSet:
    ts = NOON.timestamp()
    return HoldSet((Hold(glob, ts, ts + minutes * 60, reason, "ops"),))


def on_pool(obs: Observation, fs: FileSystem = POOL, growth: int = 10 * GiB) -> Observation:
    """`obs` with its disks' directory on `fs`, every domain inspected, each pull writing
    `growth` bytes at most."""
    usage = {
        k: ChainUsage(100 * GiB, (growth,) * len(d.chain)) for k, (_, d) in obs.disks().items()
    }
    return inspected(replace(obs, file_systems={IMAGES: fs}), usage)


def local(target: str = "vda", **kwargs) -> object:
    return disk(target, local_file=True, **kwargs)


def with_min_free(pol: Policy, min_free: MinFree) -> Policy:
    return replace(pol, defaults=replace(pol.defaults, min_free=min_free))


# -- holds ----------------------------------------------------------------------------------


def test_a_held_domain_gets_no_pull():
    result = run(observation(domain("web-1"), domain("db-1")), holds=held("web-*"))
    assert [a.key for a in starts(result)] == [key("db-1")]
    assert decision(result, key("web-1")).state is DiskState.HELD
    assert "held by `hold web-*` (ops): backup" in decision(result, key("web-1")).reason


def test_a_hold_aborts_the_daemons_running_pull_with_reason_held():
    obs = observation(domain("web-1", disk(job=job())))
    result = run(obs, holds=held("web-1"))
    assert aborts(result) == [AbortPull(key("web-1"), AbortReason.HELD)]
    assert decision(result, key("web-1")).state is DiskState.HELD


def test_a_hold_leaves_somebody_elses_job_alone():
    obs = observation(domain("web-1", disk(job=job(JobType.COPY))))
    result = run(obs, holds=held("web-1"))
    assert result.actions == ()
    assert decision(result, key("web-1")).state is DiskState.HELD


def test_an_expired_hold_holds_nothing():
    result = run(observation(domain("web-1")), holds=held("web-1"), now=NOON + timedelta(hours=2))
    assert [a.key for a in starts(result)] == [key("web-1")]


def test_the_plan_wakes_when_a_hold_ends():
    result = run(observation(domain("web-1")), pol=policy(), holds=held("web-1", minutes=5))
    assert result.next_wake == NOON + timedelta(minutes=5)


def test_an_unreadable_holds_file_holds_every_domain():
    result = run(observation(domain("web-1", disk(job=job()))), holds=HoldSet(error="denied"))
    assert aborts(result) == [AbortPull(key("web-1"), AbortReason.HELD)]


# -- hands respected --------------------------------------------------------------------------


def tracking(*keys: DiskKey) -> Memory:
    return Memory(tracked={k: TrackedJob(None, 0.0, (BASE,)) for k in keys})


def test_a_reload_that_ignores_a_disk_aborts_the_daemons_pull_there():
    obs = observation(domain("db-1", disk(job=job())))
    result = run(obs, policy(ignore("db", domains=("db-*",)), rule()), tracking(key("db-1")))
    assert aborts(result) == [AbortPull(key("db-1"), AbortReason.DESELECTED)]
    assert decision(result, key("db-1")).state is DiskState.IGNORED


def test_a_reload_that_selects_no_longer_aborts_the_daemons_pull_there():
    obs = observation(domain("db-1", disk(job=job())))
    result = run(obs, policy(rule(domains=("web-*",))), tracking(key("db-1")))
    assert aborts(result) == [AbortPull(key("db-1"), AbortReason.DESELECTED)]


def test_somebody_elses_pull_on_an_unselected_disk_is_never_aborted():
    obs = observation(domain("db-1", disk(job=job())))
    assert aborts(run(obs, policy(rule(domains=("web-*",))))) == []


def interrupted(obs: Observation, pol: Policy, count: int, minutes_ago: float) -> Memory:
    d = obs.disks()[key("web-1")][1]
    at_ = (NOON - timedelta(minutes=minutes_ago)).timestamp()
    record = Failures(count, at_, d.fingerprint, pol.fingerprint)
    return Memory(interruptions={key("web-1"): record})


def test_a_pull_aborted_by_somebody_else_backs_off_before_it_starts_again():
    obs, pol = observation(domain("web-1")), policy(backoff=60.0)
    result = run(obs, pol, interrupted(obs, pol, count=1, minutes_ago=0.5))
    assert starts(result) == []
    found = decision(result, key("web-1"))
    assert found.state is DiskState.BACKOFF
    assert "aborted by someone else 1 time(s)" in found.reason
    assert found.next_attempt_at == NOON + timedelta(seconds=30)


def test_the_backoff_after_hand_aborts_doubles_like_after_failures():
    obs, pol = observation(domain("web-1")), policy(backoff=60.0)
    result = run(obs, pol, interrupted(obs, pol, count=3, minutes_ago=3.5))
    assert decision(result, key("web-1")).next_attempt_at == NOON + timedelta(seconds=30)


def test_hand_aborts_never_make_a_disk_give_up():
    obs, pol = observation(domain("web-1")), policy(max_attempts=2, backoff=1.0, max_backoff=1.0)
    result = run(obs, pol, interrupted(obs, pol, count=10, minutes_ago=1))
    assert [a.key for a in starts(result)] == [key("web-1")]


# -- one pull per domain, read in full --------------------------------------------------------


def test_a_candidate_whose_domain_was_not_read_in_full_asks_for_it_and_waits():
    obs = Observation((domain("web-1"),))
    result = run(obs)
    assert result.inspect == frozenset({"web-1"})
    assert starts(result) == []
    assert "reading every disk of its domain" in decision(result, key("web-1")).reason


def test_a_domain_libvirt_could_not_read_waits_without_its_slot_and_is_not_asked_again():
    obs = Observation((domain("web-1"), domain("web-2")))
    read = inspected(obs)
    unread = obs.with_inspections({"web-2": read.inspections["web-2"]}, asked=("web-1", "web-2"))
    result = run(unread, policy(max_concurrent=1))
    assert [a.key for a in starts(result)] == [key("web-2")]
    assert result.inspect == frozenset()
    assert "could not read the block jobs" in decision(result, key("web-1")).reason


def test_a_job_the_full_read_found_on_another_disk_keeps_the_domain_from_pulling():
    obs = Observation((domain("web-1", disk("vda"), disk("vdb")),))
    foreign = {"vdb": job(JobType.COMMIT)}
    found = obs.with_inspections({"web-1": replace_jobs(inspected(obs), "web-1", foreign)})
    result = run(found)
    assert starts(result) == []
    assert "runs a commit job" in decision(result, key("web-1")).reason


def replace_jobs(obs: Observation, name: str, jobs: dict) -> object:
    return replace(obs.inspections[name], jobs=jobs)


def test_a_job_found_by_the_full_read_takes_its_slot_in_the_budget():
    obs = Observation((domain("web-1", disk("vda"), disk("vdb")), domain("web-2")))
    read = inspected(obs)
    found = read.with_inspections({"web-1": replace_jobs(read, "web-1", {"vdb": job()})})
    result = run(found, policy(rule(disks=("vda",)), max_concurrent=1))
    assert starts(result) == []


# -- free space ---------------------------------------------------------------------------------


def test_a_pull_that_fits_above_min_free_starts_and_says_what_it_may_write():
    result = run(on_pool(observation(domain("web-1", local()))))
    assert [(a.key, a.growth) for a in starts(result)] == [(key("web-1"), 10 * GiB)]


def test_a_pull_that_would_go_below_min_free_waits_for_space():
    fs = replace(POOL, free=15 * GiB)  # the floor is 10% = 10 GiB
    result = run(on_pool(observation(domain("web-1", local())), fs))
    assert starts(result) == []
    found = decision(result, key("web-1"))
    assert found.state is DiskState.WAITING_SPACE
    assert "15GiB free on /var/lib/libvirt/images" in found.reason
    assert "this pull may write 10GiB" in found.reason


def test_running_pulls_reserve_what_they_may_still_write():
    running = local("vda", job=job(cur=0, end=100 * GiB))
    obs = on_pool(observation(domain("web-1", running), domain("web-2", local())), growth=20 * GiB)
    mem = Memory(tracked={key("web-1"): TrackedJob(None, 0.0, (BASE,), growth=25 * GiB)})
    result = run(obs, mem=mem)  # 50 free - 25 reserved - 10 floor < 20
    assert decision(result, key("web-2")).state is DiskState.WAITING_SPACE
    assert result.space[0].reserved == 25 * GiB


def test_what_a_running_pull_reserves_shrinks_with_what_its_job_has_left():
    running = local("vda", job=job(cur=95 * GiB, end=100 * GiB))
    obs = on_pool(observation(domain("web-1", running), domain("web-2", local())), growth=20 * GiB)
    mem = Memory(tracked={key("web-1"): TrackedJob(None, 0.0, (BASE,), growth=25 * GiB)})
    assert [a.key for a in starts(run(obs, mem=mem))] == [key("web-2")]


def test_pulls_starting_together_count_each_others_growth():
    obs = on_pool(observation(domain("web-1", local()), domain("web-2", local())), growth=25 * GiB)
    result = run(obs)
    assert [a.key for a in starts(result)] == [key("web-1")]
    assert decision(result, key("web-2")).state is DiskState.WAITING_SPACE


def test_a_candidate_waiting_for_space_leaves_its_slot_to_the_next_one():
    small = FileSystem("/small", 10 * GiB, 1 * GiB)
    obs = observation(domain("web-1", local(source="/small/web-1.qcow2")), domain("web-2", local()))
    usage = {k: ChainUsage(GiB * 100, (GiB,)) for k in obs.disks()}
    obs = inspected(replace(obs, file_systems={IMAGES: POOL, "/small": small}), usage)
    result = run(obs, policy(max_concurrent=1))
    assert [a.key for a in starts(result)] == [key("web-2")]
    assert decision(result, key("web-1")).state is DiskState.WAITING_SPACE


def test_a_running_pull_is_aborted_when_something_else_fills_its_file_system():
    full = replace(POOL, free=9 * GiB)
    result = run(on_pool(observation(domain("web-1", local(job=job()))), full))
    assert aborts(result) == [AbortPull(key("web-1"), AbortReason.LOW_SPACE)]
    assert decision(result, key("web-1")).state is DiskState.WAITING_SPACE


def test_min_free_as_a_size_is_the_floor_whatever_the_file_system_size():
    pol = with_min_free(policy(), MinFree(bytes=45 * GiB))
    result = run(on_pool(observation(domain("web-1", local()))), pol)
    assert decision(result, key("web-1")).state is DiskState.WAITING_SPACE
    assert result.space[0].floor == 45 * GiB


def test_min_free_zero_turns_the_guard_off():
    full = replace(POOL, free=0)
    pol = with_min_free(policy(), MinFree())
    result = run(on_pool(observation(domain("web-1", local())), full), pol)
    assert [a.growth for a in starts(result)] == [None]
    assert result.space == ()


def test_a_file_system_that_cannot_be_measured_starts_nothing_and_says_why():
    obs = on_pool(observation(domain("web-1", local())))
    obs = replace(obs, file_systems={IMAGES: Unmeasured(IMAGES, f"{IMAGES}: Permission denied")})
    found = decision(run(obs), key("web-1"))
    assert found.state is DiskState.WAITING_SPACE
    assert "Permission denied" in found.reason


def test_a_disk_whose_top_is_not_a_local_file_is_outside_the_guard():
    rbd = disk(source="rbd://pool/web-1")  # local_file False: nothing local to measure
    result = run(on_pool(observation(domain("web-1", rbd)), replace(POOL, free=0)))
    assert [a.growth for a in starts(result)] == [None]


def test_a_pull_whose_chain_usage_is_unknown_waits_rather_than_guessing():
    obs = inspected(replace(observation(domain("web-1", local())), file_systems={IMAGES: POOL}))
    found = decision(run(obs), key("web-1"))
    assert found.state is DiskState.WAITING_SPACE
    assert "how much its backing images hold" in found.reason


def test_planning_again_after_a_start_on_a_tight_file_system_changes_nothing():
    obs = on_pool(observation(domain("web-1", local()), domain("web-2", local())), growth=25 * GiB)
    first = run(obs)
    (start,) = starts(first)
    mem = Memory(tracked={start.key: TrackedJob(None, 0.0, (BASE,), growth=start.growth)})
    assert run(apply(obs, first.actions), mem=mem).actions == ()
