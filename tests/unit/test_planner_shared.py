"""plan() with shared groups: a group's allowance applies beside the host budget."""

from __future__ import annotations

from dataclasses import replace

from builders import IMAGES, MiB, apply, at, disk, domain, inspected, job, key, observation, policy

from exporter.core.decisions import AbortPull, AbortReason, DiskState, SetSpeed, StartPull
from exporter.core.memory import Memory
from exporter.core.model import ChainUsage, FileSystem
from exporter.core.planner import plan
from exporter.core.shared import GroupAllowance, GroupUse
from exporter.policy.values import Policy, SharedGroup

NOON = at("2024-01-03T12:00")
FILER = "/mnt/filer-a/template.qcow2"
LOCAL = "/var/lib/libvirt/images/templates/local.qcow2"
GROUP = SharedGroup("filer-a", ("/mnt/filer-a/*",), 100 * MiB, 4)


def shared_policy(**kwargs: object) -> Policy:
    return replace(policy(**kwargs), shared=(GROUP,))  # type: ignore[arg-type]


def on_filer(name: str, running: int | None = None) -> object:
    pull = job(bandwidth=running) if running is not None else None
    return domain(name, disk(chain=(FILER,), job=pull))


def grant(slots: int, share: int | None = 10 * MiB, may_start: bool = True) -> dict:
    return {"filer-a": GroupAllowance(slots, share, may_start)}


def starts(actions: tuple) -> list:
    return [a.key for a in actions if isinstance(a, StartPull)]


def test_group_pulls_start_only_on_the_slots_granted() -> None:
    obs = observation(on_filer("a"), on_filer("b"), on_filer("c"))
    result = plan(obs, shared_policy(max_concurrent=3), NOON, Memory(), allowances=grant(2))
    assert starts(result.actions) == [key("a"), key("b")]
    assert result.decisions[2].reason == "waiting for a slot of shared group filer-a"


def test_a_group_pull_runs_at_the_stricter_of_host_and_group_share() -> None:
    obs = observation(on_filer("a"))
    result = plan(
        obs, shared_policy(bandwidth=50 * MiB), NOON, Memory(), allowances=grant(1, 10 * MiB)
    )
    assert result.actions == (StartPull(key("a"), None, 10 * MiB, "rule all: full pull"),)
    looser = plan(
        obs, shared_policy(bandwidth=5 * MiB), NOON, Memory(), allowances=grant(1, 10 * MiB)
    )
    assert [a.bandwidth for a in looser.actions] == [5 * MiB]


def test_a_disk_is_in_the_group_through_its_overlay_too() -> None:
    obs = observation(domain("a", disk(chain=(LOCAL,), source="/mnt/filer-a/a.qcow2")))
    result = plan(obs, shared_policy(), NOON, Memory(), allowances=grant(0))
    assert result.actions == ()


def test_pulls_outside_every_group_are_not_affected() -> None:
    obs = observation(on_filer("a"), domain("b", disk(chain=(LOCAL,))))
    result = plan(obs, shared_policy(max_concurrent=1), NOON, Memory(), allowances=grant(0))
    assert starts(result.actions) == [key("b")]  # the host slot goes past the waiting group pull


def test_a_group_without_allowance_runs_nothing() -> None:
    obs = observation(on_filer("a"))
    result = plan(obs, shared_policy(), NOON, Memory())
    assert result.actions == ()
    assert "no slot without the coordination service" in result.decisions[0].reason


def test_unreachable_coordination_starts_nothing_but_keeps_running_pulls() -> None:
    obs = observation(on_filer("a", running=10 * MiB), on_filer("b"))
    result = plan(
        obs, shared_policy(), NOON, Memory(), allowances=grant(2, 10 * MiB, may_start=False)
    )
    assert result.actions == ()
    assert result.decisions[0].state is DiskState.PULLING
    assert "cannot be reached" in result.decisions[1].reason


def test_a_lost_lease_aborts_group_pulls_as_coordination_lost() -> None:
    obs = observation(on_filer("a", running=10 * MiB), domain("b", disk(chain=(LOCAL,))))
    lost = {"filer-a": GroupAllowance(0, None, may_start=False, lost=True)}
    result = plan(obs, shared_policy(), NOON, Memory(), allowances=lost)
    assert result.actions[0] == AbortPull(key("a"), AbortReason.COORDINATION_LOST)
    assert starts(result.actions) == [key("b")]


def test_group_pulls_beyond_the_slots_held_stop_as_over_budget() -> None:
    obs = observation(on_filer("a", running=10 * MiB), on_filer("b", running=10 * MiB))
    result = plan(obs, shared_policy(), NOON, Memory(), allowances=grant(1))
    assert result.actions == (AbortPull(key("b"), AbortReason.OVER_BUDGET),)


def test_a_new_group_share_changes_the_speed_of_running_pulls() -> None:
    obs = observation(on_filer("a", running=20 * MiB))
    result = plan(obs, shared_policy(), NOON, Memory(), allowances=grant(1, 10 * MiB))
    assert result.actions == (SetSpeed(key("a"), 10 * MiB, "share of its shared group"),)


def test_the_plan_reports_pulls_limits_and_demand_per_group() -> None:
    obs = observation(on_filer("a", running=10 * MiB), on_filer("b"), on_filer("c"))
    result = plan(
        obs, shared_policy(max_concurrent=2), NOON, Memory(), allowances=grant(1, 10 * MiB)
    )
    # Two more wait, but the host itself runs at most two pulls: demand 2.
    assert result.groups == (GroupUse("filer-a", pulls=1, bandwidth=10 * MiB, demand=2),)


def test_planning_again_after_applying_a_group_plan_does_nothing() -> None:

    obs = observation(on_filer("a"), on_filer("b"), on_filer("c"))
    allowances = grant(2, 10 * MiB)
    first = plan(obs, shared_policy(max_concurrent=3), NOON, Memory(), allowances=allowances)
    again = plan(
        apply(obs, first.actions),
        shared_policy(max_concurrent=3),
        NOON,
        Memory(),
        allowances=allowances,
    )
    assert again.actions == ()


def test_a_group_candidate_waiting_for_space_leaves_its_group_slot_to_the_next_one() -> None:
    # Both overlays are in the group through its template; a's overlay lives on a full disk.
    a = domain("a", disk(chain=(FILER,), source="/small/a.qcow2", local_file=True))
    b = domain("b", disk(chain=(FILER,), local_file=True))
    obs = observation(a, b)
    small = FileSystem("/small", size=1024 * MiB, free=10 * MiB)
    big = FileSystem(IMAGES, size=100_000 * MiB, free=50_000 * MiB)
    usage = {k: ChainUsage(1024 * MiB, (100 * MiB,)) for k in obs.disks()}
    obs = inspected(replace(obs, file_systems={"/small": small, IMAGES: big}), usage)
    result = plan(obs, shared_policy(max_concurrent=2), NOON, Memory(), allowances=grant(1))
    assert starts(result.actions) == [key("b")]
    assert result.decisions[0].state is DiskState.WAITING_SPACE
