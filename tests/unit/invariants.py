"""The controller's invariants, checked against the simulated host after every step: budget,
windows, selection and idempotency, and the guards: never two pulls in one domain, no pull of
the daemon's on a held domain, no file system below min_free."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from exporter.core.clock import now_of
from exporter.core.model import FileSystem, JobType
from exporter.core.schedule import budget_at, open_windows, rule_open
from exporter.core.selection import select_rule
from exporter.core.space import image_directory
from exporter.daemon.controller import Controller
from exporter.daemon.planning import plan_reading_domains
from exporter.hosts.sim.host import SimulatedHost
from exporter.policy.values import OutsideWindows, RuleAction


def assert_invariants(
    controller: Controller, host: SimulatedHost, filled: Mapping[str, int] | None = None
) -> None:
    """Budget, windows, selection, the guards and idempotency hold for what the host shows now.

    `filled`: bytes others (a guest) wrote to each simulated file system, by directory: those
    may take it below min_free, the daemon's pulls never; and while it is below, none of the
    daemon's pulls writes there."""
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
    pulls_per_domain = Counter(
        k.domain
        for k, (_, d) in observation.disks().items()
        if d.job and d.job.type is JobType.PULL
    )
    for key in managed:
        assert pulls_per_domain[key.domain] == 1, f"two pulls in {key.domain}"
        assert controller.snapshot.holds.holding(key.domain, now.timestamp()) is None, (
            f"{key} pulls on a held domain"
        )
    min_free = policy.defaults.min_free
    for directory, fs in observation.file_systems.items():
        if not isinstance(fs, FileSystem) or min_free.off:
            continue
        floor = min_free.floor(fs.size)
        others = (filled or {}).get(directory, 0)
        assert fs.free + others >= floor, f"the daemon's pulls took {fs} below {min_free}"
        if fs.free < floor:
            writing = [k for k in managed if image_directory(host.disk(k)) == directory]
            assert not writing, f"{writing} still pull into {fs}, below min_free {min_free}"
    again, _ = plan_reading_domains(
        host, observation, policy, now, controller.memory, controller.snapshot.holds
    )
    assert again.actions == (), f"planning again acts: {again.actions}"
