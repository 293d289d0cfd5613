"""The controller's invariants, checked against the simulated host after every step."""

from __future__ import annotations

from exporter.clock import now_of
from exporter.controller import Controller
from exporter.memory import Memory
from exporter.planner import plan
from exporter.policy import OutsideWindows, RuleAction
from exporter.schedule import budget_at, open_windows, rule_open
from exporter.selection import select_rule
from exporter.simhost import SimulatedHost


def assert_invariants(controller: Controller, host: SimulatedHost, policy_now=None) -> None:
    """Budget, windows, selection and idempotency hold for what the host shows now."""
    policy = policy_now or controller.policy
    now = now_of(host.clock)
    windows = open_windows(policy, now)
    budget = budget_at(policy, windows)
    observation = host.observe()
    jobs = {key: disk.job for key, (_, disk) in observation.disks().items() if disk.job}
    assert len(jobs) <= budget.max_concurrent, f"{len(jobs)} jobs > {budget}"
    if budget.bandwidth is not None:
        total = sum(job.bandwidth for job in jobs.values())
        assert 0 not in {job.bandwidth for job in jobs.values()}, "unlimited job under a cap"
        assert total <= budget.bandwidth, f"{total} B/s > {budget}"
    domains = {d.name: d for d in observation.domains}
    for key in jobs:
        disk = next(k for k in domains[key.domain].disks if k.target == key.disk)
        rule = select_rule(policy.rules, key.domain, disk)
        assert rule is not None and rule.action is RuleAction.PULL, f"{key} is not selected"
        if policy.defaults.outside_windows is OutsideWindows.PAUSE:
            assert rule_open(rule, windows), f"{key} pulls outside the windows of {rule.name}"
    again = plan(observation, policy, now, controller.memory if controller else Memory())
    assert again.actions == (), f"planning again acts: {again.actions}"
