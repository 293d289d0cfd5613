"""The controller's invariants, checked against the simulated host after every step."""

from __future__ import annotations

from exporter.core.clock import now_of
from exporter.core.model import JobType
from exporter.core.planner import plan
from exporter.core.schedule import budget_at, open_windows, rule_open
from exporter.core.selection import select_rule
from exporter.daemon.controller import Controller
from exporter.hosts.sim.host import SimulatedHost
from exporter.policy.values import OutsideWindows, RuleAction


def assert_invariants(controller: Controller, host: SimulatedHost) -> None:
    """Budget, windows, selection and idempotency hold for what the host shows now."""
    policy = controller.policy
    now = now_of(host.clock)
    windows = open_windows(policy, now)
    budget = budget_at(policy, windows)
    observation = host.observe()
    domains = {d.name: d for d in observation.domains}
    managed, foreign = {}, {}
    for key, (domain, disk) in observation.disks().items():
        if disk.job is None:
            continue
        rule = select_rule(policy.rules, domain.name, disk)
        selected = rule is not None and rule.action is RuleAction.PULL
        (managed if selected and disk.job.type is JobType.PULL else foreign)[key] = disk.job
    # Foreign jobs take slots the daemon cannot free; it may only add up to what is left.
    assert len(managed) <= max(0, budget.max_concurrent - len(foreign)), (
        f"{len(managed)} managed + {len(foreign)} foreign jobs > {budget}"
    )
    if budget.bandwidth is not None:
        limits = [job.bandwidth for job in managed.values()]
        assert None not in limits, "unlimited pull under a cap"
        # A foreign job without a limit counts as 0 B/s: its rate is unknowable.
        foreign_limits = sum(j.bandwidth for j in foreign.values() if j.bandwidth is not None)
        total = sum(limit for limit in limits if limit is not None) + foreign_limits
        assert total <= max(budget.bandwidth, foreign_limits), f"{total} B/s > {budget}"
    for key in managed:
        disk = next(k for k in domains[key.domain].disks if k.target == key.disk)
        rule = select_rule(policy.rules, key.domain, disk)
        assert rule is not None
        if policy.defaults.outside_windows is OutsideWindows.PAUSE:
            assert rule_open(rule, windows), f"{key} pulls outside the windows of {rule.name}"
    again = plan(observation, policy, now, controller.memory)
    assert again.actions == (), f"planning again acts: {again.actions}"
