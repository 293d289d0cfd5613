"""The plan the daemon would make now, for `plan` and `status`: the host as observed, the
policy, the memory the daemon saved (read only: retries, backoff, given-up disks, pulls in
flight) and the holds in force, with the domains a start needs read in full as the daemon reads
them, so that the two commands never disagree with it."""

from __future__ import annotations

from pathlib import Path

from exporter.core.clock import Clock, now_of
from exporter.core.decisions import Plan
from exporter.core.holds import HoldSet
from exporter.core.host import Host
from exporter.core.model import Observation
from exporter.daemon.hold_store import HoldStore
from exporter.daemon.planning import plan_reading_domains
from exporter.daemon.state_store import StateStore
from exporter.policy.values import Policy


def plan_with_saved_state(
    host: Host, observation: Observation, policy: Policy, clock: Clock, state_dir: Path
) -> tuple[Plan, HoldSet]:
    """The plan and the holds it honoured. Raises HostError(CONNECTION) like `Host.inspect`."""
    memory = StateStore(state_dir).load_readonly()
    holds = HoldStore(state_dir).read()
    result, _ = plan_reading_domains(host, observation, policy, now_of(clock), memory, holds)
    return result, holds
