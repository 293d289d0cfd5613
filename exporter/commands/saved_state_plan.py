"""The plan the daemon would make now, for `plan` and `status`: the host as observed, the
policy, and the memory the daemon saved (read only: retries, backoff, given-up disks, pulls in
flight), so that the two commands never disagree."""

from __future__ import annotations

from pathlib import Path

from exporter.core.clock import Clock, now_of
from exporter.core.decisions import Plan
from exporter.core.model import Observation
from exporter.core.planner import plan
from exporter.daemon.state_store import StateStore
from exporter.policy.values import Policy


def plan_with_saved_state(
    observation: Observation, policy: Policy, clock: Clock, state_dir: Path
) -> Plan:
    return plan(observation, policy, now_of(clock), StateStore(state_dir).load_readonly())
