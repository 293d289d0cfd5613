"""The daemon in this process: the real Controller over a real LibvirtHost, in a thread.

`running_in_process(policy_text, workdir, ...)` writes `workdir`/policy.yaml, refuses a policy
that could select someone else's domain, runs `Controller.run` in a background thread over a
RecordingHost and always stops it on the way out (Shutdown, join; a loop that does not stop
or that crashed fails the caller). The test or benchmark reads the controller's snapshot and
the recorded calls directly, and may rewrite the policy file or put messages in the inbox.

`QUICK_TIMERS` (the default) keep tests from waiting for a 30 s resync; benchmarks of
reaction times pass the daemon's own defaults, `ControllerOptions()`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.core.clock import Clock, SystemClock
from exporter.core.decisions import AbortReason, DiskState
from exporter.core.model import DiskKey
from exporter.daemon.controller import Controller, ControllerOptions, Shutdown
from exporter.daemon.hold_store import HoldStore
from exporter.daemon.snapshot import Snapshot
from exporter.daemon.state_store import StateStore
from exporter.hosts.libvirt.host import LibvirtHost
from exporter.policy.source import PolicySource
from harness.libvirtd import URI
from harness.own_names import require_own_policy
from harness.policy_files import write_policy
from harness.recording_host import RecordingHost
from harness.waiting import wait_until

QUICK_TIMERS = ControllerOptions(resync_interval=1.0, progress_interval=0.5)
STOP_TIMEOUT = 15.0


@dataclass
class InProcessDaemon:
    controller: Controller
    host: RecordingHost
    clock: Clock
    policy: Path
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def snapshot(self) -> Snapshot:
        return self.controller.snapshot

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.errors

    def state(self, key: DiskKey) -> DiskState | None:
        plan = self.snapshot.plan
        if plan is None:
            return None
        return next((d.state for d in plan.decisions if d.key == key), None)

    def completed(self, key: DiskKey) -> int:
        return self.snapshot.counters.completed.get(key, 0)

    def started(self, key: DiskKey) -> int:
        return self.snapshot.counters.started.get(key, 0)

    def aborted(self, key: DiskKey, reason: AbortReason) -> int:
        return self.snapshot.counters.aborted.get((key, reason), 0)

    def foreign_jobs(self) -> list[DiskKey]:
        """Jobs the daemon does not manage (other engineers' pulls take budget slots)."""
        return [j.key for j in self.snapshot.jobs if not j.managed]

    def wait_completed(self, keys: Iterable[DiskKey], timeout: float) -> None:
        wanted = list(keys)
        wait_until(
            lambda: all(self.completed(k) >= 1 for k in wanted),
            timeout,
            lambda: f"completions of {wanted}: {self.snapshot.counters}",
        )


@contextlib.contextmanager
def running_in_process(
    policy_text: str,
    workdir: Path,
    clock: Clock | None = None,
    options: ControllerOptions = QUICK_TIMERS,
    only: Iterable[str] | None = None,
    state_dir: Path | None = None,
    libvirt_host: LibvirtHost | None = None,
) -> Iterator[InProcessDaemon]:
    """The daemon on `policy_text` and qemu:///system, stopped on exit; `only`: see
    RecordingHost. `state_dir`: where it keeps its memory and reads holds (None: neither);
    `libvirt_host`: one built with other settings than the daemon's defaults."""
    path = write_policy(workdir / "policy.yaml", policy_text)
    require_own_policy(path)
    clock = clock or SystemClock()
    host = RecordingHost(libvirt_host or LibvirtHost(URI), clock, only)
    store = StateStore(state_dir) if state_dir is not None else None
    holds = HoldStore(state_dir) if state_dir is not None else None
    controller = Controller(host, PolicySource(path), clock, store, options, holds=holds)
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            controller.run()
        except BaseException as error:
            errors.append(error)
            raise

    thread = threading.Thread(target=loop, name="controller", daemon=True)
    daemon = InProcessDaemon(controller, host, clock, path, thread, errors)
    thread.start()
    try:
        yield daemon
    finally:
        controller.inbox.put(Shutdown())
        thread.join(timeout=STOP_TIMEOUT)
        if thread.is_alive():
            host.close()
            raise AssertionError(f"the controller did not stop within {STOP_TIMEOUT} s")
    if errors:
        raise AssertionError("the controller loop crashed") from errors[0]
