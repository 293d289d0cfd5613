"""Shared storage groups in the plan: which disks are in a group, and what this host may run.

A shared group (`policy.shared`) limits group pulls across every host. The coordinator (outside
the core) turns the cluster's state into one `GroupAllowance` per group for this host; the
planner applies it beside the host budget, and the stricter of the two wins:

- a disk is in every group one of whose `paths` globs matches an image of its chain, the
  overlay included; a pull counts against each of its groups and the host budget;
- a running group pull keeps running while each of its groups has a slot left for it (best
  ordered first); the others stop: `coordination_lost` when the allowance says the lease may
  be gone, `over_budget` otherwise;
- a candidate starts only where every one of its groups may start new pulls and has a free
  slot;
- a group pull's speed limit is the lowest of its groups' shares and the host share.

A group with no allowance at all (no coordinator) runs nothing: the safe reading of a budget
that nobody can enforce.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.core.model import Disk
from exporter.core.selection import compile_globs
from exporter.policy.values import SharedGroup


@dataclass(frozen=True)
class GroupAllowance:
    """What this host may run in one group now, as granted by the coordinator."""

    slots: int  # group pulls this host may run at once, those running included
    share: int | None  # bytes/s for each of this host's group pulls; None = unlimited
    may_start: bool  # False while the coordination service cannot be reached
    lost: bool = False  # the lease may have expired: every group pull must stop


# What a group gets without a coordinator, or after its lease may have expired.
NOTHING = GroupAllowance(slots=0, share=None, may_start=False, lost=True)


@dataclass(frozen=True)
class GroupUse:
    """This host's part in one group after a plan: reported to the coordinator and metrics."""

    group: str
    pulls: int  # group pulls running on this host once the plan is applied
    bandwidth: int | None  # the sum of their speed limits, bytes/s; None = one is unlimited
    demand: int  # group pulls this host would run if the group allowed: `pulls` + waiting


def groups_of(groups: tuple[SharedGroup, ...], disk: Disk) -> tuple[str, ...]:
    """The names of the groups a disk is in, in policy order."""
    images = (disk.source, *disk.chain) if disk.source is not None else disk.chain
    names: list[str] = []
    for group in groups:
        regex = compile_globs(group.paths)
        if regex is not None and any(regex.match(image) for image in images):
            names.append(group.name)
    return tuple(names)


class GroupLedger:
    """Slots taken per group while one plan is being made; thrown away with the plan."""

    def __init__(self, allowances: Mapping[str, GroupAllowance]) -> None:
        self._allowances = allowances
        self._used: Counter[str] = Counter()

    def allowance(self, group: str) -> GroupAllowance:
        return self._allowances.get(group, NOTHING)

    def keep(self, groups: tuple[str, ...]) -> bool:
        """Take a slot in each group for a running pull; False (nothing taken) if one is full."""
        return self._take(groups, starting=False)

    def start(self, groups: tuple[str, ...]) -> bool:
        """Take a slot in each group for a new pull; False (nothing taken) if one refuses."""
        return self._take(groups, starting=True)

    def _take(self, groups: tuple[str, ...], starting: bool) -> bool:
        for group in groups:
            allowance = self.allowance(group)
            if allowance.lost or (starting and not allowance.may_start):
                return False
            if self._used[group] >= allowance.slots:
                return False
        self._used.update(groups)
        return True

    def release(self, groups: tuple[str, ...]) -> None:
        """Give back the slots of a pull taken before but not run after all (host budget)."""
        self._used.subtract(groups)

    def lost(self, groups: tuple[str, ...]) -> bool:
        return any(self.allowance(group).lost for group in groups)

    def limit(self, groups: tuple[str, ...], host_share: int | None) -> int | None:
        """The speed limit of a pull in `groups`: the strictest share (None = unlimited)."""
        shares = [s for s in (host_share, *(self.allowance(g).share for g in groups)) if s]
        return min(shares) if shares else None

    def refusal(self, groups: tuple[str, ...]) -> str:
        """Why a candidate in `groups` cannot start: one sentence for its decision."""
        for group in groups:
            allowance = self.allowance(group)
            if group not in self._allowances:
                return (
                    f"shared group {group}: no slot without the coordination service "
                    "(run --coordination.url)"
                )
            if allowance.lost or not allowance.may_start:
                return (
                    f"shared group {group}: the coordination service cannot be reached; "
                    "no new group pulls until it can"
                )
            if self._used[group] >= allowance.slots:
                return f"waiting for a slot of shared group {group}"
        return "waiting for a free slot"


def group_uses(
    groups: tuple[SharedGroup, ...],
    running: Iterable[tuple[tuple[str, ...], int | None]],
    waiting: Iterable[tuple[str, ...]],
    host_slots: int,
) -> tuple[GroupUse, ...]:
    """Per group: pulls and limits running after a plan, and this host's demand.

    `running` gives each group pull's groups and speed limit; `waiting`, each candidate's groups
    that did not start. Demand counts waiting candidates only up to the host's own slots, since
    the host budget would stop the rest anyway.
    """
    if not groups:
        return ()
    pulls: Counter[str] = Counter()
    bandwidth: dict[str, int | None] = {}
    for names, limit in running:
        for name in names:
            pulls[name] += 1
            before = bandwidth.get(name, 0)
            bandwidth[name] = None if before is None or limit is None else before + limit
    wanted: Counter[str] = Counter()
    for names in waiting:
        if names:  # most candidates are in no group
            wanted.update(names)
    uses: list[GroupUse] = []
    for group in groups:
        running_here = pulls[group.name]
        more = min(wanted[group.name], max(0, host_slots - running_here))
        uses.append(
            GroupUse(group.name, running_here, bandwidth.get(group.name, 0), running_here + more)
        )
    return tuple(uses)
