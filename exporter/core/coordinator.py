"""The one protocol between the controller and the fleet coordinator (`exporter.fleet`).

The controller asks for this host's allowance per shared group before it plans, reports what
the plan runs and wants afterwards, and publishes the coordinator's status with its snapshot.
The coordinator talks to the coordination service on its own thread: none of these calls may
wait on the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from exporter.core.shared import GroupAllowance, GroupUse
from exporter.policy.values import SharedGroup


@dataclass(frozen=True)
class CoordinationChanged:
    """A wake-up from the coordinator after a round: the allowances changed (slots, shares,
    reachability), so plan again; or only its status did, so publish it."""

    allowances: bool = True


@dataclass(frozen=True)
class GroupStatus:
    """One shared group as this host last saw it."""

    group: SharedGroup
    slots: int  # slots this host holds
    share: int | None  # bytes/s each of this host's group pulls may use; None = unlimited
    cluster_slots: int  # slots held by all hosts together (this one included)
    cluster_demand: int  # group pulls all hosts would run if the group allowed
    members: int  # hosts taking part in the group


@dataclass(frozen=True)
class CoordinationStatus:
    up: bool  # the coordination service answered the last round
    requests: int  # requests sent to the coordination service since the start
    groups: tuple[GroupStatus, ...]


class Coordinator(Protocol):
    def allowances(self, now: float) -> Mapping[str, GroupAllowance]:
        """This host's allowance per group at monotonic time `now` (a lease may have run out)."""
        ...

    def report(self, groups: tuple[SharedGroup, ...], uses: tuple[GroupUse, ...]) -> None:
        """The policy's groups and this host's part in each after a plan."""
        ...

    def lease_end(self, now: float) -> float:
        """Monotonic time at which the allowances change without a wake-up: a held lease may
        end (inf: no such time)."""
        ...

    def status(self) -> CoordinationStatus | None:
        """What the coordinator last saw; None without coordination."""
        ...

    def subscribe(self, sink: Callable[[CoordinationChanged], None]) -> None:
        """Deliver a wake-up to `sink`, from any thread, after every round."""
        ...

    def close(self) -> None:
        """Give back every slot and leave every group (best effort, bounded in time)."""
        ...


class NoCoordinator:
    """No coordination service: no group allowance at all, so shared groups run nothing."""

    def allowances(self, now: float) -> Mapping[str, GroupAllowance]:
        return {}

    def report(self, groups: tuple[SharedGroup, ...], uses: tuple[GroupUse, ...]) -> None: ...

    def lease_end(self, now: float) -> float:
        return math.inf

    def status(self) -> CoordinationStatus | None:
        return None

    def subscribe(self, sink: Callable[[CoordinationChanged], None]) -> None: ...

    def close(self) -> None: ...
