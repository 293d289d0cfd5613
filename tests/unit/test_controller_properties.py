"""Stateful property test: the controller on the simulated host under random sequences of
clock steps, job failures, destroyed and restarted domains, dropped connections, jobs started
by hand, silent completions and policy reloads. After every step the invariants hold; at the
end, once the faults stop and windows allow, every selected disk is pulled."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from invariants import assert_invariants

from exporter.core.decisions import DiskDecision, DiskState
from exporter.core.model import DiskKey, JobType
from exporter.daemon.controller import Controller, ControllerOptions, Reload
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import MiB, SimDisk
from exporter.hosts.sim.world import DEFAULT_EPOCH
from exporter.policy.source import PolicySource

BASE = "/templates/os-base.qcow2"
APP = "/templates/app.qcow2"
DOMAINS = ("web-1", "web-2", "web-3", "app-1", "app-2", "db-1")
POLICIES = (
    # any time, tight budget
    """version: 1
timezone: UTC
defaults: {bandwidth: 4MiB/s, max_concurrent: 1, retry: {max_attempts: 3, backoff: 30s}}
rules:
  - {name: db, domains: ["db-*"], action: ignore}
  - {name: all}
""",
    # windows that open and close within the hour, pause outside them
    """version: 1
timezone: UTC
defaults: {bandwidth: 2MiB/s, max_concurrent: 2, outside_windows: pause,
           retry: {max_attempts: 2, backoff: 1m}}
windows:
  quarter: {from: "00:00", to: "00:15", bandwidth: 8MiB/s, max_concurrent: 3}
  half: {from: "00:30", to: "00:45"}
rules:
  - {name: web, domains: ["web-*"], keep_base: "/templates/os-base*", windows: [quarter],
     priority: 5}
  - {name: apps, domains: ["app-*"], windows: [quarter, half]}
""",
    # finish outside windows, unlimited inside
    """version: 1
timezone: UTC
defaults: {bandwidth: 3MiB/s, max_concurrent: 3, outside_windows: finish}
windows:
  early: {from: "00:10", to: "00:20", bandwidth: unlimited}
rules:
  - {name: db, domains: ["db-*"], action: ignore}
  - {name: web, domains: ["web-*"], windows: [early]}
  - {name: rest}
""",
)

DONE = {DiskState.INDEPENDENT, DiskState.GAVE_UP}
RESYNC = 120.0
PROGRESS = 5.0
KEYS = st.sampled_from([DiskKey(d, "vda") for d in DOMAINS])


class ControllerMachine(RuleBasedStateMachine):
    @initialize(
        variant=st.integers(0, len(POLICIES) - 1),
        size=st.integers(1, 400),
        start=st.integers(0, 24 * 3600 - 1),
    )
    def start(self, variant: int, size: int, start: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bpx-prop-"))
        self.policy_file = self.folder / "policy.yaml"
        self.policy_file.write_text(POLICIES[variant])
        self.host = SimulatedHost(start=DEFAULT_EPOCH + start, device_speed=64 * MiB)
        for name in DOMAINS:
            disk = SimDisk("vda", f"/images/{name}.qcow2", chain=(APP, BASE), size=size * MiB)
            self.host.add_domain(name, [disk])
        self.controller = Controller(
            self.host,
            PolicySource(self.policy_file),
            self.host.clock,
            options=ControllerOptions(
                resync_interval=RESYNC, progress_interval=PROGRESS, file_check_interval=3600
            ),
        )
        self.run(0.0)

    def run(self, seconds: float) -> None:
        self.controller.run(until=self.host.clock.monotonic() + seconds)

    @rule(seconds=st.sampled_from([0.5, 3.0, 30.0, 300.0]))
    def time_passes(self, seconds: float) -> None:
        self.run(seconds)

    @rule(key=KEYS)
    def a_pull_fails(self, key: DiskKey) -> None:
        if self.host.job(key) is not None:
            self.host.fail_job(key)
        self.run(0.1)

    @rule(name=st.sampled_from(DOMAINS))
    def a_domain_is_destroyed_or_started(self, name: str) -> None:
        if self.host.domain_state(name).can_run_jobs:
            self.host.destroy_domain(name)
        else:
            self.host.start_domain(name, paused=True)
        self.run(0.1)

    @rule(key=KEYS)
    def someone_starts_a_pull_by_hand(self, key: DiskKey) -> None:
        if (
            self.host.connected
            and self.host.domain_state(key.domain).can_run_jobs
            and self.host.job(key) is None
            and self.host.chain(key)
        ):
            self.host.add_foreign_job(key, JobType.PULL, bandwidth=MiB)
        # No event announces a job started by hand: the next resync finds it. Until then the
        # host may be over budget, and only the daemon's own actions are held to it.
        self.run(RESYNC + 1)

    @rule(key=KEYS)
    def a_pull_completes_unannounced(self, key: DiskKey) -> None:
        if self.host.job(key) is not None:
            self.host.complete_silently(key)
        self.run(PROGRESS + 1)  # found by the next progress refresh

    @rule()
    def the_connection_drops_for_a_while(self) -> None:
        self.host.drop_connection()
        self.run(45)
        self.host.restore_connection()
        self.run(0.1)

    @rule(variant=st.integers(0, len(POLICIES) - 1))
    def the_policy_is_reloaded(self, variant: int) -> None:
        self.policy_file.write_text(POLICIES[variant])
        self.controller.inbox.put(Reload())
        self.run(0.1)

    @invariant()
    def invariants_hold(self) -> None:
        if hasattr(self, "controller") and self.host.connected:
            assert_invariants(self.controller, self.host)

    def teardown(self) -> None:
        if not hasattr(self, "controller"):
            return
        for name in DOMAINS:
            if not self.host.domain_state(name).can_run_jobs:
                self.host.start_domain(name, paused=True)
        for _ in range(3 * 24):  # hours: every window opens several times
            self.run(3600)
            if self.all_done():
                break
        for decision in self.decisions():
            assert decision.state in DONE, decision

    def decisions(self) -> list[DiskDecision]:
        assert self.controller.snapshot.plan is not None
        return [
            d
            for d in self.controller.snapshot.plan.decisions
            if d.rule is not None and d.state is not DiskState.IGNORED
        ]

    def all_done(self) -> bool:
        return all(d.state in DONE for d in self.decisions())


ControllerMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_controller_under_random_faults = ControllerMachine.TestCase
