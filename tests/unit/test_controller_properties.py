"""Stateful property test: the controller on the simulated host under random sequences of
clock steps, job failures, destroyed and restarted domains, dropped connections, jobs started,
aborted and throttled by hand, silent completions, policy reloads, holds, and a guest filling
the file system the overlays live on. After every step the invariants hold; at the end, once
the faults stop, the holds are released and windows allow, every selected disk is pulled."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

from example_counts import scaled
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from invariants import assert_invariants

from exporter.core.decisions import DiskDecision, DiskState
from exporter.core.holds import Hold
from exporter.core.model import DiskKey, JobType
from exporter.daemon.controller import Controller, ControllerOptions, Reload
from exporter.daemon.hold_store import HoldStore
from exporter.hosts.sim.host import SimulatedHost
from exporter.hosts.sim.records import GiB, MiB, SimDisk
from exporter.hosts.sim.world import DEFAULT_EPOCH
from exporter.policy.source import PolicySource

BASE = "/templates/os-base.qcow2"
APP = "/templates/app.qcow2"
APP_1 = "app-1"
DOMAINS = ("web-1", "web-2", "web-3", APP_1, "app-2", "db-1")
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
    # back-to-back windows for app-1's two disks: at 00:10 its vda, unless small enough for
    # the first window, is aborted and its vdb held behind that abort (one pull per domain);
    # at 00:20 the other way round, unless vdb is done
    """version: 1
timezone: UTC
defaults: {bandwidth: 1MiB/s, max_concurrent: 2, outside_windows: pause}
windows:
  first: {from: "00:00", to: "00:10"}
  second: {from: "00:10", to: "00:20"}
  third: {from: "00:20", to: "00:40", bandwidth: unlimited}
rules:
  - {name: db, domains: ["db-*"], action: ignore}
  - {name: second, domains: ["app-1"], disks: ["vdb"], windows: [second]}
  - {name: first, windows: [first, third]}
""",
)

DONE = {DiskState.INDEPENDENT, DiskState.GAVE_UP}
IMAGES = "/images"
FS_SIZE = 10 * GiB  # min_free is the default 10%: 1 GiB
FS_FREE = 7 * GiB  # room for every pull (7 disks, db-1's by hand too, x 2 x 400 MiB), not at once
FLOOR = FS_SIZE // 10
RESYNC = 120.0
PROGRESS = 5.0
HOLDS_CHECK = 30.0
KEYS = st.sampled_from([DiskKey(d, "vda") for d in DOMAINS])


def disks_of(name: str, size: int) -> list[SimDisk]:
    """A vda with `size` bytes in each image of its chain; app-1 also has a vdb."""
    targets = ("vda", "vdb") if name == APP_1 else ("vda",)
    return [SimDisk(t, f"{IMAGES}/{name}-{t}.qcow2", chain=(APP, BASE), size=size) for t in targets]


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
        self.by_hand: set[DiskKey] = set()
        self.host = SimulatedHost(start=DEFAULT_EPOCH + start, device_speed=64 * MiB)
        for name in DOMAINS:
            self.host.add_domain(name, disks_of(name, size * MiB))
        self.host.add_file_system(IMAGES, FS_SIZE, FS_FREE)
        self.filled = 0  # bytes a guest wrote there
        self.holds = HoldStore(self.folder / "state")
        self.controller = Controller(
            self.host,
            PolicySource(self.policy_file),
            self.host.clock,
            options=ControllerOptions(
                resync_interval=RESYNC,
                progress_interval=PROGRESS,
                file_check_interval=3600,
                holds_check_interval=HOLDS_CHECK,  # 0.25 s: 4 wake-ups per simulated second
            ),
            holds=self.holds,
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
            self.by_hand.add(key)
        # No event announces a job started by hand: the next resync finds it. Until then the
        # host may be over budget, and only the daemon's own actions are held to it.
        self.run(RESYNC + 1)

    @rule(key=KEYS)
    def a_pull_completes_unannounced(self, key: DiskKey) -> None:
        if self.host.job(key) is not None:
            self.host.complete_silently(key)
        self.run(PROGRESS + 1)  # found by the next progress refresh

    @rule(key=KEYS)
    def someone_aborts_a_pull_by_hand(self, key: DiskKey) -> None:
        if self.host.connected and self.host.job(key) is not None:
            self.host.abort(key)
        self.run(0.1)

    @rule(key=KEYS)
    def someone_speeds_a_pull_up_by_hand(self, key: DiskKey) -> None:
        if self.host.connected and self.host.job(key) is not None:
            self.host.set_speed(key, 50 * MiB)
        self.run(PROGRESS + 1)  # put back at the next progress refresh

    @rule(glob=st.sampled_from(["web-*", "app-1", "*"]), minutes=st.sampled_from([1, 30]))
    def an_operator_holds_domains(self, glob: str, minutes: int) -> None:
        now = self.host.now()
        hold = Hold(glob, now, now + minutes * 60, "snapshot", "ops")
        self.holds.update(lambda kept: (*kept, hold), now)
        self.run(HOLDS_CHECK + 0.1)  # in force at the next check

    @rule()
    def the_operator_releases_every_hold(self) -> None:
        self.holds.update(lambda kept: (), self.host.now())
        self.run(HOLDS_CHECK + 0.1)

    @rule()
    def a_guest_fills_the_file_system_below_min_free(self) -> None:
        # At once below the floor: a fill that crossed it later, while pulls go on writing
        # what they were admitted for, would be found at a refresh this rule cannot time.
        size = self.host.file_system_free(IMAGES) - FLOOR // 2
        if size > 0:
            self.host.fill_file_system(IMAGES, size)
            self.filled += size
        self.run(PROGRESS + 1)  # the daemon's pulls there stop at the next progress refresh

    @rule()
    def the_guest_frees_what_it_wrote(self) -> None:
        self.host.fill_file_system(IMAGES, -self.filled)
        self.filled = 0
        self.run(RESYNC + 1)  # no event says so: found at the next resync

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
            assert_invariants(self.controller, self.host, filled={IMAGES: self.filled})

    @invariant()
    def the_daemon_runs_one_pull_per_domain(self) -> None:
        if not hasattr(self, "controller"):
            return
        jobs = self.host.running_jobs()
        self.by_hand &= jobs.keys()  # a pull started by hand is the daemon's own next time
        ours = Counter(k.domain for k, j in jobs.items() if j.type is JobType.PULL)
        ours.subtract(k.domain for k in self.by_hand)
        assert max(ours.values(), default=0) <= 1, jobs

    def teardown(self) -> None:
        if not hasattr(self, "controller"):
            return
        try:
            self.drains_to_done()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)  # one folder per example

    def drains_to_done(self) -> None:
        """Whatever happened, once the domains run, the guest's data and the holds are gone
        and windows open, every disk ends done."""
        self.the_guest_frees_what_it_wrote()
        self.the_operator_releases_every_hold()
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
    max_examples=scaled(30),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_controller_under_random_faults = ControllerMachine.TestCase
