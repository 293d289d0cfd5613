"""The controller: the daemon's only loop.

It wakes on a host event, a timer, a window boundary, a policy reload, a changed holds file, a
coordinator round or a signal; observes the host; settles the outcome of tracked pulls from the
re-read chain; plans (with the coordinator's allowance per shared group, reading in full the
domains where a pull may start: `exporter.daemon.planning`); acts; publishes an immutable
snapshot. Level-triggered: events only wake it, so a lost event, a daemon restart or a libvirtd
restart costs a resync and nothing else.

Other hands on the same disks are respected: a pull of the daemon's that somebody aborted backs
off like a failure (`Memory.interruptions`); a speed somebody set by hand is put back at the next
progress refresh, which notices it and reconciles; holds (`exporter.daemon.hold_store`) are
checked every `holds_check_interval` (a stat) and take effect at once; jobs started by others
are looked for in parts, when the host says the next part is due (`Host.sweep_jobs`).

One module although over 500 lines: every step reads and writes the same loop state, and its
pieces (state saving, outcomes, rates, holds, planning) already live elsewhere.
"""

from __future__ import annotations

import logging
import math
import queue
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from exporter.core.clock import Clock, now_of
from exporter.core.coordinator import CoordinationChanged, Coordinator, NoCoordinator
from exporter.core.decisions import (
    AbortPull,
    AbortReason,
    Action,
    DiskState,
    Plan,
    SetSpeed,
    StartPull,
)
from exporter.core.holds import NO_HOLDS, HoldSet
from exporter.core.host import Host
from exporter.core.memory import Memory, TrackedJob
from exporter.core.model import (
    BlockJob,
    ConnectionEvent,
    Disk,
    DiskKey,
    ErrorReason,
    FileSystem,
    HostError,
    HostEvent,
    JobEvent,
    JobOutcome,
    JobType,
    LifecycleEvent,
    Observation,
)
from exporter.core.outcomes import EVENT_GRACE_SECONDS, Outcome, OutcomeKind, settle
from exporter.core.space import below_floor, image_directory
from exporter.daemon.histogram import HistogramAccumulator
from exporter.daemon.hold_store import HoldStore, HoldWatch
from exporter.daemon.outcome_counters import OutcomeCounters
from exporter.daemon.planning import needs_another_look, plan_reading_domains
from exporter.daemon.rate_meter import RateMeter
from exporter.daemon.snapshot import JobProgress, Snapshot
from exporter.daemon.state_store import StateSaver, StateStore
from exporter.policy.source import PolicySource
from exporter.policy.values import Policy

log = logging.getLogger(__name__)

# Start errors that mean "the host changed under us": resync, but do not count a failure.
RACE_REASONS = frozenset(
    {
        ErrorReason.DISK_BUSY,
        ErrorReason.DOMAIN_NOT_RUNNING,
        ErrorReason.DOMAIN_NOT_FOUND,
        ErrorReason.DISK_NOT_FOUND,
        ErrorReason.CONNECTION,
    }
)
# The one reconnect backoff (the libvirt adapter tries whenever it is called): a refused
# connection costs nothing, and a libvirtd back from a restart should be seen within seconds;
# the log says so once per outage, with a reminder every STILL_DOWN_WARNING_SECONDS.
MAX_CONNECT_BACKOFF = 5.0
STILL_DOWN_WARNING_SECONDS = 300.0
TIMER_TOLERANCE = 1e-6  # seconds
MIN_TIMER_SECONDS = 0.01
LOOK_AGAIN_SECONDS = 0.5
MIN_SWEEP_SECONDS = 1.0


@dataclass(frozen=True)
class Reload:
    """SIGHUP: re-read the policy file."""


@dataclass(frozen=True)
class Shutdown:
    """SIGTERM/SIGINT: stop after the current step."""


Wake = HostEvent | CoordinationChanged | Reload | Shutdown


class Notifier(Protocol):
    """The service manager (systemd's notify protocol); a no-op outside systemd."""

    def ready(self) -> None: ...
    def reloading(self) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self) -> None: ...


class _NoNotifier:
    def ready(self) -> None: ...
    def reloading(self) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self) -> None: ...


@dataclass(frozen=True)
class ControllerOptions:
    resync_interval: float = 30.0  # full observe even without events (catches hand-made jobs)
    progress_interval: float = 2.0  # refresh of running jobs' progress only
    file_check_interval: float = 1.0  # policy file changed on disk?
    holds_check_interval: float = 0.25  # holds file changed? (a stat: a hold acts within 1 s)
    abort_on_shutdown: bool = False  # default: leave pulls running; they are adopted on restart


class Controller:
    def __init__(
        self,
        host: Host,
        source: PolicySource,
        clock: Clock,
        store: StateStore | None = None,
        options: ControllerOptions | None = None,
        notifier: Notifier | None = None,
        holds: HoldStore | None = None,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._host = host
        self._coordinator: Coordinator = coordinator or NoCoordinator()  # none: groups run nothing
        self._source = source
        self._clock = clock
        self._store = store
        self._options = options or ControllerOptions()
        self._notifier: Notifier = notifier or _NoNotifier()
        self.inbox: queue.SimpleQueue[Wake] = queue.SimpleQueue()
        self._memory = store.load() if store else Memory()
        self._state = StateSaver(store, self._memory)
        self._counters = OutcomeCounters()
        self._events: dict[DiskKey, JobOutcome] = {}
        self._vanished: dict[DiskKey, float] = {}
        self._jobs: dict[DiskKey, BlockJob] = {}
        self._pull_directories: list[str] = []  # where the daemon's running pulls write
        self._rates = RateMeter()
        self._plan: Plan | None = None
        self._dependents: dict[str, int] = {}
        self._libvirt_up = False
        self._connect_backoff = 0.0
        self._down_since: float | None = None  # monotonic start of the current outage
        self._down_warned = 0.0  # when the outage was last logged as a warning
        self._host_refused = False
        self._durations = HistogramAccumulator()
        self._last_success: float | None = None
        self._reload_ok = True
        self._reload_success_at: float | None = clock.time()
        self._policy_error: str | None = None
        self._hold_watch = HoldWatch(holds) if holds is not None else None
        now = clock.monotonic()
        self._next_full = now
        self._next_progress = now + self._options.progress_interval
        self._next_file_check = now + self._options.file_check_interval
        self._next_holds_check = now + self._options.holds_check_interval
        self._next_sweep = now  # the host says when next (`Sweep.next_in`)
        self.snapshot: Snapshot = self._build_snapshot()
        self._host.subscribe(self.inbox.put)
        self._coordinator.subscribe(self.inbox.put)

    @property
    def policy(self) -> Policy:
        """The policy in force: the last one that loaded."""
        return self._source.policy

    @property
    def memory(self) -> Memory:
        return self._memory

    # -- the loop ---------------------------------------------------------------------------

    def run(self, until: float | None = None) -> None:
        """Reconcile until a Shutdown arrives, or until the clock's monotonic time `until`."""
        self.step([])
        self._notifier.ready()
        while until is None or self._clock.monotonic() < until:
            deadline = self.next_deadline() if until is None else min(self.next_deadline(), until)
            first = self._clock.wait(self.inbox, deadline - self._clock.monotonic())
            wakes = [first] if first is not None else []
            wakes.extend(self._drain())
            if any(isinstance(wake, Shutdown) for wake in wakes):
                self.shutdown()
                return
            self.step(wakes)
            self._notifier.watchdog()

    def _drain(self) -> Iterable[Wake]:
        while True:
            try:
                yield self.inbox.get_nowait()
            except queue.Empty:
                return

    def next_deadline(self) -> float:
        deadline = min(self._next_full, self._next_file_check)
        if self._hold_watch is not None:
            deadline = min(deadline, self._next_holds_check)
        if self._libvirt_up:  # down: only the reconnect backoff wakes us
            deadline = min(deadline, self._next_sweep)
            if self._jobs:
                deadline = min(deadline, self._next_progress)
        return deadline

    def step(self, wakes: Iterable[Wake]) -> None:
        """Handle the given wake-ups and whatever timers are due; one reconcile at most."""
        full = False
        publish = False  # the coordinator's status changed: a new snapshot, no reconcile
        for wake in wakes:
            if isinstance(wake, JobEvent):
                self._events[wake.key] = wake.outcome
                full = True
            elif isinstance(wake, LifecycleEvent):
                full = True
            elif isinstance(wake, CoordinationChanged):
                full |= wake.allowances
                publish = True
            elif isinstance(wake, ConnectionEvent):
                self._libvirt_up = wake.up
                self._connect_backoff = 0.0
                full = True
            elif isinstance(wake, Reload):
                full |= self._reload()
        # A timer is due when the clock reached it; the tolerance absorbs float rounding of
        # deadlines derived from wall-clock instants (a window boundary must not be missed).
        now = self._clock.monotonic() + TIMER_TOLERANCE
        if now >= self._next_file_check:
            self._next_file_check = now + self._options.file_check_interval
            if self._source.changed_on_disk():
                full |= self._reload()
        if self._hold_watch is not None and now >= self._next_holds_check:
            self._next_holds_check = now + self._options.holds_check_interval
            full |= self._hold_watch.changed()
        if full or now >= self._next_full:
            self._reconcile()
        elif self._jobs and self._libvirt_up and now >= self._next_progress:
            self._refresh_progress()
        elif self._libvirt_up and now >= self._next_sweep:
            if not self._sweep_jobs() and publish:
                self.snapshot = self._build_snapshot()
        elif publish:
            self.snapshot = self._build_snapshot()

    def shutdown(self) -> None:
        self._notifier.stopping()
        if self._options.abort_on_shutdown:
            for key in sorted(self._memory.tracked):
                self._apply(AbortPull(key, AbortReason.SHUTDOWN), None)
        self._state.save(self._memory, again=True)
        self.snapshot = self._build_snapshot()
        self._host.close()

    # -- policy -----------------------------------------------------------------------------

    def _reload(self) -> bool:
        self._notifier.reloading()
        result = self._source.reload()
        self._notifier.ready()
        self._reload_ok = result.error is None
        self._policy_error = result.error
        if self._reload_ok:
            self._reload_success_at = self._clock.time()
        # Every completed load is published at once, even one that changes nothing to plan
        # (the policy in force restored after a broken one): the status must not wait a resync.
        self.snapshot = self._build_snapshot()
        return result.changed

    # -- holds ------------------------------------------------------------------------------

    def _holds(self) -> HoldSet:
        return self._hold_watch.holds if self._hold_watch is not None else NO_HOLDS

    # -- reconcile --------------------------------------------------------------------------

    def _reconcile(self) -> None:
        if self._reconcile_once():
            # The plan held starts behind its own aborts (one pull per domain, see
            # exporter.planner): plan again now on a fresh observation, which shows whether the
            # aborted pulls are gone, instead of waiting for a timer. Once: should the host
            # still show them, the LOOK_AGAIN_SECONDS timer takes over.
            self._reconcile_once()

    def _reconcile_once(self) -> bool:
        """Observe, settle, plan, act; whether to plan again at once (held starts)."""
        started = self._clock.monotonic()
        try:
            observation = self._host.observe()
        except HostError as error:
            self._host_unreachable(error)
            return False
        self._libvirt_up = True
        self._connect_backoff = 0.0
        if self._down_since is not None:
            log.info("the host is reachable again after %.0f s", started - self._down_since)
            self._down_since = None
        epoch = self._clock.time()
        self._settle(observation, epoch)
        self._forget_gone_domains(observation)
        self._state.save(self._memory, again=True)  # failing, or never tried: find out first
        policy = self._source.policy
        try:
            current, observation = plan_reading_domains(
                self._host,
                observation,
                policy,
                now_of(self._clock),
                self._memory,
                self._holds(),
                state_saved=self._state.saved,
                allowances=self._coordinator.allowances(self._clock.monotonic()),
            )
        except HostError as error:
            self._host_unreachable(error)
            return False
        self._adopt(current, observation, epoch)
        disks = observation.disks()
        for action in current.actions:
            self._apply(action, disks.get(action.key, (None, None))[1])
        again = bool(current.held_starts) and not self._host_refused
        self._plan = current
        self._coordinator.report(policy.shared, current.groups)
        self._jobs = {key: disk.job for key, (_, disk) in disks.items() if disk.job is not None}
        self._pull_directories = sorted(
            {d for k in self._memory.tracked if k in disks and (d := image_directory(disks[k][1]))}
        )
        for key in self._memory.tracked.keys() - self._jobs.keys():  # just started: read soon
            self._jobs[key] = BlockJob(JobType.PULL, 0, 0, None)
        self._measure_rates()
        self._dependents = dict(Counter(i for _, d in disks.values() for i in d.chain))
        self._state.save(self._memory)
        finished = self._clock.monotonic()
        self._durations.observe(finished - started)
        self._last_success = self._clock.time()
        self._schedule_after_reconcile(current, finished, bool(current.actions))
        self.snapshot = self._build_snapshot()
        return again

    def _host_unreachable(self, error: HostError) -> None:
        now = self._clock.monotonic()
        if self._down_since is None:
            self._down_since = self._down_warned = now
            log.warning(
                "cannot observe the host: %s (trying again every %.0f s at most)",
                error,
                MAX_CONNECT_BACKOFF,
            )
        elif now - self._down_warned >= STILL_DOWN_WARNING_SECONDS:
            self._down_warned = now
            log.warning("cannot observe the host for %.0f s: %s", now - self._down_since, error)
        else:
            log.debug("cannot observe the host: %s", error)
        self._libvirt_up = False
        self._connect_backoff = min(max(1.0, self._connect_backoff * 2), MAX_CONNECT_BACKOFF)
        self._next_full = now + self._connect_backoff
        self.snapshot = self._build_snapshot()

    def _schedule_after_reconcile(self, current: Plan, now: float, acted: bool) -> None:
        deadline = now + self._options.resync_interval
        if current.next_wake is not None:
            deadline = min(deadline, now + current.next_wake.timestamp() - self._clock.time())
        if self._vanished:
            grace_end = min(self._vanished.values()) + EVENT_GRACE_SECONDS
            deadline = min(deadline, now + grace_end - self._clock.time())
        deadline = min(deadline, self._coordinator.lease_end(now))  # group pulls stop in time
        # The host changed under an action, starts wait behind aborts, or domains are still to
        # be read before a start: look again soon.
        if self._host_refused or current.held_starts or needs_another_look(current):
            deadline = min(deadline, now + LOOK_AGAIN_SECONDS)
            self._host_refused = False
        # Never a timer in the past or within float rounding of now: that would spin.
        self._next_full = max(deadline, now + MIN_TIMER_SECONDS)
        # Right after acting, read the new jobs' progress soon rather than a full interval later.
        self._next_progress = now + (0.0 if acted else self._options.progress_interval)

    def _settle(self, observation: Observation, epoch: float) -> None:
        result = settle(self._memory.tracked, observation, self._events, self._vanished, epoch)
        disks = observation.disks()
        for outcome in result.outcomes:
            self._record(outcome, disks.get(outcome.key, (None, None))[1], epoch)
        self._vanished = dict(result.unsettled)
        self._events = {k: v for k, v in self._events.items() if k in self._vanished}

    def _record(self, outcome: Outcome, disk: Disk | None, epoch: float) -> None:
        key = outcome.key
        self._memory = self._memory.without_tracked(key)
        if outcome.kind is OutcomeKind.COMPLETED:
            self._counters.completed(key, self._jobs.get(key))
            self._memory = self._memory.with_success(key)
            log.info("pull of %s completed", key, extra=_fields(key))
        elif outcome.kind is OutcomeKind.FAILED:
            self._count_failure(key, disk, epoch)
            last = self._jobs.get(key)
            log.warning(
                "pull of %s failed at %s of %s bytes, chain %s (libvirt gives no reason: "
                "check the backing images are reachable and the overlay has room)",
                key,
                last.cur if last else "?",
                last.end if last else "?",
                " <- ".join(disk.chain) if disk else "?",
                extra=_fields(key),
            )
        else:
            assert outcome.reason is not None
            self._counters.aborted(key, outcome.reason)
            if outcome.reason is AbortReason.EXTERNAL:  # respected: backs off like a failure
                fingerprint = disk.fingerprint if disk is not None else ""
                policy_fp = self._source.policy.fingerprint
                self._memory = self._memory.with_interruption(key, epoch, fingerprint, policy_fp)
            log.info(
                "pull of %s ended without completing: %s",
                key,
                outcome.reason,
                extra=_fields(key, outcome.reason),
            )

    def _forget_gone_domains(self, observation: Observation) -> None:
        """Series and memories of domains that no longer exist (undefined, renamed) go at once;
        tracked pulls were settled (domain_stopped) just before."""
        names = frozenset(d.name for d in observation.domains)
        self._counters.keep_only_domains(names)
        self._memory = self._memory.only_domains(names)

    def _count_failure(self, key: DiskKey, disk: Disk | None, epoch: float) -> None:
        fingerprint = disk.fingerprint if disk is not None else ""
        self._counters.failed(key)
        self._memory = self._memory.with_failure(
            key, epoch, fingerprint, self._source.policy.fingerprint
        )

    def _adopt(self, current: Plan, observation: Observation, epoch: float) -> None:
        """A selected disk already pulling (by hand, or before a restart) is tracked, once."""
        disks = observation.disks()
        for decision in current.decisions:
            if decision.state is not DiskState.PULLING or decision.key in self._memory.tracked:
                continue
            _, disk = disks[decision.key]
            if disk.job is None:  # about to be started by this plan
                continue
            self._memory = self._memory.with_tracked(
                decision.key, TrackedJob(base=None, started_at=epoch, chain_before=disk.chain)
            )
            self._counters.started(decision.key)
            log.info(
                "adopted a pull already running on %s", decision.key, extra=_fields(decision.key)
            )

    def _apply(self, action: Action, disk: Disk | None) -> None:
        try:
            if isinstance(action, StartPull):
                self._host.start_pull(action.key, action.base, action.bandwidth)
                chain = disk.chain if disk is not None else ()
                tracked = TrackedJob(action.base, self._clock.time(), chain, action.growth)
                self._memory = self._memory.with_tracked(action.key, tracked)
                self._counters.started(action.key)
                log.info(
                    "started pull of %s: %s", action.key, action.reason, extra=_fields(action.key)
                )
            elif isinstance(action, SetSpeed):
                self._host.set_speed(action.key, action.bandwidth)
            else:
                self._host.abort(action.key)
                if action.key in self._memory.tracked:
                    self._memory = self._memory.without_tracked(action.key)
                    self._counters.aborted(action.key, action.reason)
                log.info(
                    "aborted pull of %s: %s",
                    action.key,
                    action.reason,
                    extra=_fields(action.key, action.reason),
                )
        except HostError as error:
            # A job that ended between the observation and the action is no cause for alarm.
            level = logging.INFO if error.reason is ErrorReason.NO_JOB else logging.WARNING
            log.log(
                level,
                "%s on %s failed: %s",
                type(action).__name__,
                action.key,
                error,
                extra=_fields(action.key, error.reason),
            )
            self._host_refused = True
            if isinstance(action, StartPull) and error.reason not in RACE_REASONS:
                self._count_failure(action.key, disk, self._clock.time())

    # -- progress ---------------------------------------------------------------------------

    def _refresh_progress(self) -> None:
        now = self._clock.monotonic()
        self._next_progress = now + self._options.progress_interval
        try:
            fresh = self._host.refresh_jobs(sorted(self._jobs))
        except HostError as error:
            self._host_unreachable(error)
            return
        vanished = retuned = False
        limits = self._plan.limits if self._plan is not None else {}
        for key, job in fresh.items():
            if job is None:
                self._jobs.pop(key, None)
                vanished = True
            else:
                self._jobs[key] = job
                # A pull of the daemon's whose speed somebody changed by hand.
                retuned |= key in limits and job.bandwidth != limits[key]
        self._measure_rates()
        # Settle a job that ended, put a hand-set speed back, stop pulls on a file system that
        # something else filled below min_free: now, not at the next resync.
        if vanished or retuned or self._space_low():
            self._reconcile()
        else:
            self.snapshot = self._build_snapshot()

    def _space_low(self) -> bool:
        """A file system the daemon's pulls write to is below min_free (a statvfs each)."""
        min_free = self._source.policy.defaults.min_free
        if not self._pull_directories or min_free.off:
            return False
        try:
            found = self._host.file_systems(self._pull_directories)
        except HostError:
            return False  # the reconcile that follows a failed refresh says why
        return any(
            isinstance(fs, FileSystem) and below_floor(fs, min_free) for fs in found.values()
        )

    def _sweep_jobs(self) -> bool:
        """A job somebody else started counts against the budget from the next reconcile: now,
        once the sweep finds it. Whether a snapshot was published."""
        now = self._clock.monotonic()
        self._next_sweep = now + MIN_SWEEP_SECONDS
        try:
            sweep = self._host.sweep_jobs()
        except HostError as error:
            self._host_unreachable(error)
            return True
        wait = sweep.next_in if sweep.next_in is not None else math.inf
        self._next_sweep = now + max(wait, MIN_SWEEP_SECONDS)
        if not sweep.found:
            return False
        log.info("a block job started by somebody else turned up: reconciling")
        self._reconcile()
        return True

    def _measure_rates(self) -> None:
        """Rates from the cursors, and the bytes the daemon's pulls advanced since last read."""
        self._counters.copied(self._jobs, self._memory.tracked)
        self._rates.measure(self._jobs, self._clock.monotonic())

    # -- publishing -------------------------------------------------------------------------

    def _build_snapshot(self) -> Snapshot:
        policy = self._source.policy
        tracked = self._memory.tracked
        return Snapshot(
            taken_at=self._clock.time(),
            libvirt_up=self._libvirt_up,
            plan=self._plan,
            jobs=tuple(
                JobProgress(key, job, self._rates.rate(key), key in tracked)
                for key, job in sorted(self._jobs.items())
            ),
            counters=self._counters.freeze(),
            backing_dependents=self._dependents,
            window_names=tuple(w.name for w in policy.windows),
            rule_names=tuple(r.name for r in policy.rules),
            policy_source=str(self._source.path),
            policy_reload_ok=self._reload_ok,
            policy_reload_success_at=self._reload_success_at,
            policy_error=self._policy_error,
            reconcile_duration=self._durations.freeze(),
            last_reconcile_success_at=self._last_success,
            state_saved=self._state.saved,
            state_save_failures=self._state.failures,
            holds=self._holds(),
            coordination=self._coordinator.status(),
        )


def _fields(key: DiskKey, reason: object = None) -> dict[str, str]:
    """A log record's structured fields (`--log.format`): which disk, and why when there is one."""
    fields = {"domain": key.domain, "disk": key.disk}
    if reason is not None:
        fields["reason"] = str(reason)
    return fields
