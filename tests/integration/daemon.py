"""A harness for daemon-level integration tests: the real Controller over a real LibvirtHost.

- `running_daemon(...)`: writes a policy, runs a Controller in a background thread and stops it
  in a `finally` (Shutdown, join; a crash of the loop fails the test). The policy must select
  only this test's own `bpx-test-*` domains: other engineers pull on the same libvirtd.
- `RecordingHost`: the Host protocol passed through, with every action call and every event
  timestamped, so a test can prove "no start_pull for an adopted job" or time a reaction.
- `JobSampler`: polls `blockJobInfo` of named disks on its own connection every ~100 ms, the
  ground truth the daemon's snapshot is checked against.
- `OffsetClock`: the system clock shifted by an adjustable offset, so a test can stand just
  before a window boundary; monotonic time and the queue wait stay real.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import helpers
import libvirt

from exporter.core.clock import Clock, SystemClock
from exporter.core.decisions import AbortReason, DiskState
from exporter.core.host import EventSink, Host
from exporter.core.model import BlockJob, DiskKey, HostEvent, JobType, Observation
from exporter.daemon.controller import Controller, ControllerOptions, Shutdown
from exporter.daemon.snapshot import Snapshot
from exporter.hosts.libvirt.domain_xml import parse_disks
from exporter.hosts.libvirt.host import LibvirtHost
from exporter.policy.loader import load_policy
from exporter.policy.source import PolicySource

if TYPE_CHECKING:
    from conftest import Domains

T = TypeVar("T")
OWN_PREFIX = "bpx-test-"
SAMPLE_INTERVAL = 0.1
PULL = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL


# -- clock -----------------------------------------------------------------------------------


# -- recording host --------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    name: str  # start_pull, set_speed, abort
    key: DiskKey
    base: str | None
    bandwidth: int | None
    at: float  # time.monotonic() when the call returned
    epoch: float  # the controller's clock when the call returned
    took: float  # seconds the call spent in libvirt


@dataclass(frozen=True)
class SeenEvent:
    event: HostEvent
    at: float  # time.monotonic() when libvirt delivered it


class RecordingHost:
    """Passes every call through to `inner`; records actions and events (list appends only,
    which are atomic, so the test thread may read while the controller thread writes).

    `only`: the domains observe() reports; None = all. The budget is host-wide, so another
    engineer's block job on the shared libvirtd takes a slot and its bandwidth from the
    daemon under test; tests that measure slots or speeds see only their own domains.
    """

    def __init__(self, inner: Host, clock: Clock, only: Iterable[str] | None = None) -> None:
        self._inner = inner
        self._clock = clock
        self._only = None if only is None else frozenset(only)
        self.calls: list[Call] = []
        self.events: list[SeenEvent] = []
        self.observes: list[tuple[float, float]] = []  # (monotonic start, seconds taken)

    def observe(self) -> Observation:
        began = time.monotonic()
        seen = self._inner.observe()
        self.observes.append((began, time.monotonic() - began))
        if self._only is None:
            return seen
        return Observation(tuple(d for d in seen.domains if d.name in self._only))

    def refresh_jobs(self, keys: Iterable[DiskKey]) -> Mapping[DiskKey, BlockJob | None]:
        return self._inner.refresh_jobs(keys)

    def start_pull(self, key: DiskKey, base: str | None, bandwidth: int | None) -> None:
        began = time.monotonic()
        self._inner.start_pull(key, base, bandwidth)
        self._record("start_pull", key, base, bandwidth, began)

    def set_speed(self, key: DiskKey, bandwidth: int | None) -> None:
        began = time.monotonic()
        self._inner.set_speed(key, bandwidth)
        self._record("set_speed", key, None, bandwidth, began)

    def abort(self, key: DiskKey) -> None:
        began = time.monotonic()
        self._inner.abort(key)
        self._record("abort", key, None, None, began)

    def subscribe(self, sink: EventSink) -> None:
        def recorded(event: HostEvent) -> None:
            self.events.append(SeenEvent(event, time.monotonic()))
            sink(event)

        self._inner.subscribe(recorded)

    def close(self) -> None:
        self._inner.close()

    def calls_of(self, name: str, key: DiskKey | None = None) -> list[Call]:
        return [c for c in list(self.calls) if c.name == name and key in (None, c.key)]

    def _record(
        self, name: str, key: DiskKey, base: str | None, bandwidth: int | None, began: float
    ) -> None:
        now = time.monotonic()
        self.calls.append(Call(name, key, base, bandwidth, now, self._clock.time(), now - began))


# -- the daemon ------------------------------------------------------------------------------


@dataclass
class Daemon:
    controller: Controller
    host: RecordingHost
    clock: Clock
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


def check_policy_is_own(path: Path) -> None:
    """Refuse a policy that could select a disk of someone else's test domain."""
    for rule in load_policy(path).rules:
        if not rule.domains:
            raise ValueError(f"rule {rule.name}: no `domains` means every domain on the host")
        for glob in rule.domains:
            if not glob.startswith(OWN_PREFIX) or len(glob) < len(OWN_PREFIX) + 8:
                raise ValueError(f"rule {rule.name}: {glob!r} may select foreign domains")


def options(**overrides: float | bool) -> ControllerOptions:
    """Short timers so the tests never wait for a 30 s resync."""
    values: dict[str, float | bool] = {"resync_interval": 1.0, "progress_interval": 0.5}
    values.update(overrides)
    return ControllerOptions(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def running_daemon(
    policy_text: str,
    folder: Path,
    clock: Clock | None = None,
    controller_options: ControllerOptions | None = None,
    only: Iterable[str] | None = None,
) -> Iterator[Daemon]:
    """The daemon on `policy_text`, stopped on exit; `only`: see RecordingHost."""
    path = folder / "policy.yaml"
    path.write_text(policy_text)
    check_policy_is_own(path)
    clock = clock or SystemClock()
    host = RecordingHost(LibvirtHost(helpers.URI), clock, only)
    controller = Controller(host, PolicySource(path), clock, None, controller_options or options())
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            controller.run()
        except BaseException as error:
            errors.append(error)
            raise

    thread = threading.Thread(target=loop, name="controller", daemon=True)
    daemon = Daemon(controller, host, clock, thread, errors)
    daemon.thread.start()
    try:
        yield daemon
    finally:
        controller.inbox.put(Shutdown())
        daemon.thread.join(timeout=15)
        if daemon.thread.is_alive():
            host.close()
            raise AssertionError("the controller did not stop within 15 s of Shutdown")
    if daemon.errors:
        raise AssertionError("the controller loop crashed") from daemon.errors[0]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: Callable[[], str] | str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll until `predicate()`; fail naming `what` (a callable is evaluated on failure only)."""
    if helpers.wait_for(predicate, timeout, interval):
        return
    detail = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout} s waiting for {detail}")


# -- ground truth from libvirt ---------------------------------------------------------------


def live_chain(conn: libvirt.virConnect, key: DiskKey) -> tuple[str, ...]:
    """The disk's backing chain in the live (or, shut off, the inactive) XML."""
    for item in parse_disks(conn.lookupByName(key.domain).XMLDesc(0)):
        if item.disk.target == key.disk:
            return item.disk.chain
    raise KeyError(key)


@dataclass(frozen=True)
class Sample:
    round: int  # every key is read once per round, rounds strictly one after the other
    key: DiskKey
    at: float  # time.monotonic() right after the read
    job: BlockJob | None


class JobSampler:
    """Reads the block job of each key every `interval` on its own libvirt connection."""

    def __init__(self, keys: Iterable[DiskKey], interval: float = SAMPLE_INTERVAL) -> None:
        self.keys = tuple(keys)
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> JobSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = libvirt.open(helpers.URI)
        try:
            rounds = 0
            while not self._stop.is_set():
                for key in self.keys:
                    job = _job_info(conn, key)
                    self.samples.append(Sample(rounds, key, time.monotonic(), job))
                rounds += 1
                self._stop.wait(self.interval)
        finally:
            conn.close()

    def of(self, key: DiskKey) -> list[Sample]:
        return [s for s in list(self.samples) if s.key == key]

    def running(self, key: DiskKey) -> list[Sample]:
        return [s for s in self.of(key) if s.job is not None]

    def ever_ran(self, key: DiskKey) -> bool:
        return bool(self.running(key))

    def rounds(self) -> list[dict[DiskKey, BlockJob | None]]:
        by_round: dict[int, dict[DiskKey, BlockJob | None]] = {}
        for s in list(self.samples):
            by_round.setdefault(s.round, {})[s.key] = s.job
        return [by_round[r] for r in sorted(by_round) if len(by_round[r]) == len(self.keys)]

    def max_concurrent(self) -> tuple[int, int]:
        """(proven, naive): the most jobs proven to run at one instant, and the most seen in
        one round. A job seen in two consecutive rounds ran between the rounds' reads, so jobs
        seen in both rounds ran together then; one round alone may catch one job just before it
        ended and the next just after it started."""
        rounds = self.rounds()
        naive = max((sum(j is not None for j in r.values()) for r in rounds), default=0)
        proven = max(
            (
                sum(a[k] is not None and b[k] is not None for k in self.keys)
                for a, b in itertools.pairwise(rounds)
            ),
            default=0,
        )
        return proven, naive

    def rate(self, key: DiskKey, skip: float, below: int) -> tuple[float, float]:
        """(bytes/s, seconds measured) of `key`'s cursor: from `skip` s after the first sighting
        to the last sample whose cursor is still under `below` (where copying, not skipping)."""
        running = [s for s in self.running(key) if s.job is not None and s.job.cur < below]
        if not running:
            return 0.0, 0.0
        start = next((s for s in running if s.at >= running[0].at + skip), None)
        end = running[-1]
        if start is None or start.job is None or end.job is None or end.at <= start.at:
            return 0.0, 0.0
        return (end.job.cur - start.job.cur) / (end.at - start.at), end.at - start.at


def _job_info(conn: libvirt.virConnect, key: DiskKey) -> BlockJob | None:
    flags = libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
    try:
        info = conn.lookupByName(key.domain).blockJobInfo(key.disk, flags)
    except libvirt.libvirtError:
        return None  # domain stopped or gone: no job
    if not info:
        return None
    return BlockJob(
        type=JobType.PULL if info.get("type") == PULL else JobType.UNKNOWN,
        cur=int(info.get("cur", 0)),
        end=int(info.get("end", 0)),
        bandwidth=int(info.get("bandwidth", 0)) or None,  # libvirt's 0 = unlimited
    )


# -- policies --------------------------------------------------------------------------------


def rule(name: str, domains: Iterable[str], **fields: object) -> str:
    """One rule as YAML; values are written as JSON (valid YAML flow), so paths stay strings."""
    lines = [f"  - name: {name}", f"    domains: {json.dumps(list(domains))}"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def policy(
    *rules: str,
    bandwidth: str = "unlimited",
    max_concurrent: int = 2,
    windows: str = "",
    outside_windows: str = "pause",
) -> str:
    """A policy in UTC; `windows` is the YAML body under `windows:` (indented two spaces)."""
    text = (
        "version: 1\n"
        "timezone: UTC\n"
        "defaults:\n"
        f"  bandwidth: {bandwidth}\n"
        f"  max_concurrent: {max_concurrent}\n"
        f"  outside_windows: {outside_windows}\n"
        "  retry: {max_attempts: 3, backoff: 1m, max_backoff: 10m}\n"
    )
    if windows:
        text += "windows:\n" + windows
    return text + "rules:\n" + "".join(rules)


# -- domains ---------------------------------------------------------------------------------


def start_with_chains(
    domains: Domains, folder: Path, label: str, fills_mib: Iterable[int], depth: int = 1
) -> dict[DiskKey, helpers.Chain]:
    """One paused domain with a disk per fill (vda, vdb, ...): a 64 MiB chain of `depth`
    overlays over a base holding that many MiB of data."""
    chains: dict[str, helpers.Chain] = {}
    for index, fill in enumerate(fills_mib):
        target = f"vd{chr(ord('a') + index)}"
        chains[target] = helpers.create_chain(
            folder, name=f"{label}-{target}", depth=depth, size_mib=64, fill_mib=fill
        )
    specs = [helpers.DiskSpec(target, chain.top) for target, chain in chains.items()]
    name = domains.start(label, specs).name()
    return {DiskKey(name, target): chain for target, chain in chains.items()}
