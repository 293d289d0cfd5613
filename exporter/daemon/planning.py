"""Planning with what a start needs to know: plan, read in full the domains the plan asks for
(`Plan.inspect`), plan again with them.

The planner stays pure: it names the domains it needs read (every disk's job, each chain's
usage) and this loop, the only I/O between plans, reads them. Each round reads at least one
domain more; after MAX_ROUNDS, candidates still unread wait for the next reconcile (the
controller comes back soon, see `needs_another_look`). A domain libvirt could not read is
`Observation.unread`: its candidates wait, without a slot, for the next resync, so that one
unreadable domain neither blocks the others nor makes the controller plan twice a second.
Used by the controller and by the `plan` and `status` commands, so what they show is what the
daemon does.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from exporter.core.decisions import Plan
from exporter.core.holds import NO_HOLDS, HoldSet
from exporter.core.host import Host
from exporter.core.memory import Memory
from exporter.core.model import Observation
from exporter.core.planner import plan
from exporter.core.shared import GroupAllowance
from exporter.policy.values import Policy

MAX_ROUNDS = 3


def plan_reading_domains(
    host: Host,
    observation: Observation,
    policy: Policy,
    now: datetime,
    memory: Memory,
    holds: HoldSet = NO_HOLDS,
    *,
    state_saved: bool = True,
    allowances: Mapping[str, GroupAllowance] | None = None,
) -> tuple[Plan, Observation]:
    """The plan to act on, and the observation with the domains read for it (arguments as
    `exporter.core.planner.plan`'s). Raises HostError(CONNECTION) like `Host.inspect`."""

    def planned(seen: Observation) -> Plan:
        return plan(
            seen, policy, now, memory, holds=holds, state_saved=state_saved, allowances=allowances
        )

    current = planned(observation)
    for _ in range(MAX_ROUNDS):
        # A domain asked once is read or `unread` after it: the planner never asks for it again.
        wanted = current.inspect
        if not wanted:
            break
        observation = observation.with_inspections(host.inspect(sorted(wanted)), wanted)
        current = planned(observation)
    return current, observation


def needs_another_look(current: Plan) -> bool:
    """Candidates are left unread: plan again soon rather than at the next resync."""
    return bool(current.inspect)
