"""`plan(observation, policy, now, memory, holds=...) -> Plan`: what the policy means, as a pure
function.

No I/O, no clock reads (`now` is an aware datetime; memory and hold times are epoch seconds
compared with `now.timestamp()`), no randomness; the same inputs give the same plan, actions in
the same order. What the guards need comes in as values: the free space of the image
directories and the domains read in full (`Observation.file_systems`, `.inspections`), the
operators' holds (`holds`).

1. Selection (`exporter.core.selection`): the first rule in policy order that matches a disk wins.
   No rule: IGNORED, rule None. A rule with `action: ignore`: IGNORED. Neither kind of disk is
   ever touched, even when a job runs on it - except the daemon's own pull (tracked in memory)
   on a running domain, which a reload that deselected the disk aborts (DESELECTED).

2. Each disk selected by a pull rule gets the first state that applies:
   - domain shut off or in another non-running state: NOT_RUNNING (paused domains can pull);
   - disk read-only, transient or without a source image: UNSUPPORTED;
   - `keep_base` set, the chain not empty and no chain image matching it: UNSUPPORTED;
   - no job running and nothing left to pull (chain empty, or its nearest image is the
     keep_base): INDEPENDENT. A disk with a running job is never done while it runs;
   - no job, but the daemon still tracks the pull it started (its outcome is not proven
     yet): PENDING, never started twice;
   - a hold is in force on the domain (`exporter.core.holds`): HELD; a pull running there is
     aborted (HELD), other jobs are left alone;
   - a pull job runs: the pull is managed (ours, or adopted when started by hand): PULLING;
     aborted (LOW_SPACE, WAITING_SPACE) when its file system is below min_free;
   - another job type runs: PENDING, "busy with a <type> job"; never touched, takes a slot;
   - failures remembered for the same disk and policy fingerprints (others count as 0):
     count >= max_attempts: GAVE_UP; before last_failure_at + backoff(count): BACKOFF, where
     backoff(n) = min(backoff * 2**(n-1), max_backoff). Pulls others aborted
     (`Memory.interruptions`) back off the same way, but never give up;
   - the rule's windows are all closed: WAITING_WINDOW;
   - otherwise a candidate: PENDING, or PULLING when this plan starts it.
   A job on a disk that is NOT_RUNNING or UNSUPPORTED (even a pull) is foreign, never touched.

3. Aborts. A managed pull whose rule's windows are closed is aborted (WINDOW_CLOSED,
   WAITING_WINDOW) when outside_windows is pause; with finish it keeps running but its rule
   starts nothing new. Managed pulls that do not fit the budget (see `exporter.core.bandwidth`)
   are aborted (OVER_BUDGET), worst-ordered first; they become PENDING (or WAITING_WINDOW when
   their rule is closed). Pulls are never aborted to make room for a higher priority candidate.

4. Starts (`exporter.core.starts`): candidates in order priority desc, domain, disk, while the
   budget's slots last. One pull per domain: a candidate whose domain runs any job (or gets a
   pull in this plan) waits, PENDING: QEMU 7.2 crashes the guest when two pulls of one domain
   finish together. A candidate whose domain this plan frees by aborting every job in it is
   held, PENDING: it takes its slot and share, and `Plan.held_starts` names it; the next
   plan, on the host after acting, starts it (and nothing else), so the only start that waits
   for another plan is one behind an abort in its own domain. The controller plans again at
   once after such a plan. A candidate starts only in a domain read in full (otherwise
   `Plan.inspect` names it, and it keeps its slot), and only if its file system keeps min_free
   after it and what the pulls running there may still write (`exporter.core.space`; else
   WAITING_SPACE, and the next candidate may take the slot).
   While the daemon cannot save its state (`state_saved` False) no candidate
   starts: a restart could not adopt the pull. They wait, PENDING; running pulls go on.
   Shared groups (`exporter.core.shared`): a group pull also needs a slot of every group it
   is in, as this host's allowance grants; running group pulls without one are aborted
   (COORDINATION_LOST when the allowance is lost, OVER_BUDGET otherwise), candidates without
   one wait and leave the host slot to the next candidate, and a group pull's limit is the
   lowest of the host share and its groups' shares. Pulls outside every group are unaffected.
   Budget: the host budget in force (`schedule.budget_at`). Foreign jobs (every job on a disk
   that is not a managed pull) take a slot each and their bandwidth limit; every managed pull
   gets the same share (`exporter.core.bandwidth.allocate`). SetSpeed is emitted only where a
   kept pull's limit differs from its share (None = unlimited, for both). A foreign job without
   a limit is counted as 0 bytes/s (its rate is unknowable). A share is at least 1 byte/s, so
   at most `available` bytes/s worth of pulls run: fewer start, and kept pulls beyond that are
   aborted (OVER_BUDGET) - the aggregate of limits never exceeds the budget.

5. Actions come in an order that keeps the aggregate within the budget when applied one by
   one: aborts, speed cuts, starts (best first), speed raises. Aborts and speed changes are
   sorted by key.

6. Every disk gets one DiskDecision; decisions are sorted by key. `next_wake` is the earliest
   of the next window boundary, the end of any BACKOFF and the end of a hold in force.

One module although over 500 lines: what the policy means, state by state, reads best in one
place; the arithmetic lives beside it (bandwidth, retry, space, starts, shared).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo
from enum import Enum

from exporter.core import schedule
from exporter.core.bandwidth import Allocation, allocate
from exporter.core.decisions import (
    AbortPull,
    AbortReason,
    Action,
    DiskDecision,
    DiskState,
    Plan,
    SetSpeed,
    StartPull,
)
from exporter.core.holds import NO_HOLDS, Hold, HoldSet
from exporter.core.memory import Memory
from exporter.core.model import (
    BlockJob,
    Disk,
    DiskKey,
    Domain,
    DomainState,
    FileSystem,
    JobType,
    Observation,
)
from exporter.core.retry import NO_WAIT, backoff_delay, counted, wait_after
from exporter.core.selection import CompiledRule, first_match, selector_for
from exporter.core.shared import GroupAllowance, GroupLedger, group_uses, groups_of
from exporter.core.space import SpaceLedger, still_to_write
from exporter.core.starts import busy_domains, choose_starts
from exporter.policy.values import Budget, OutsideWindows, Policy, Rule, RuleAction

__all__ = ["backoff_delay", "plan"]


class _Role(Enum):
    """What the planner may do with a disk, beyond the state it reports."""

    NONE = "none"  # no job and nothing to start
    FOREIGN = "foreign"  # a job the planner never touches; takes a slot and its bandwidth
    MANAGED = "managed"  # a pull the planner owns: keep, throttle or abort
    ABORT = "abort"  # a pull of the daemon's to abort now, for `_Triage.abort`
    CANDIDATE = "candidate"  # may start if slots, bandwidth, its domain and free space allow


@dataclass(frozen=True)
class _Triage:
    key: DiskKey
    rule: Rule | None
    state: DiskState
    reason: str
    depth: int
    failures: int
    next_attempt_at: datetime | None
    role: _Role
    job: BlockJob | None
    base: str | None  # keep_base image for a candidate's StartPull
    rule_open: bool
    disk: Disk
    abort: AbortReason | None = None  # for _Role.ABORT
    groups: tuple[str, ...] = ()  # shared groups of a managed pull or candidate

    @property
    def order(self) -> tuple[int, str, str]:
        priority = self.rule.priority if self.rule is not None else 0
        return (-priority, self.key.domain, self.key.disk)

    def decided(self, state: DiskState, reason: str) -> DiskDecision:
        return DiskDecision(
            key=self.key,
            rule=self.rule.name if self.rule is not None else None,
            state=state,
            reason=reason,
            priority=self.rule.priority if self.rule is not None else 0,
            depth=self.depth,
            consecutive_failures=self.failures,
            next_attempt_at=self.next_attempt_at,
        )


@dataclass(frozen=True)
class _Context:
    """What every disk's triage needs, computed once per plan."""

    policy: Policy
    open_windows: frozenset[str]
    now_ts: float
    tz: tzinfo | None
    memory: Memory
    holds: HoldSet
    space: SpaceLedger


def _datetime_at(ts: float, tz: tzinfo | None) -> datetime:
    try:
        return datetime.fromtimestamp(ts, tz)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=tz)


def _unsupported(disk: Disk) -> str | None:
    if disk.readonly:
        return "disk is read-only; a pull writes into the top image"
    if disk.transient:
        return "disk is transient; its top image is thrown away when the domain stops"
    if disk.source is None:
        return "disk has no source image to pull into"
    return None


def _triage(
    ctx: _Context,
    domain: Domain,
    disk: Disk,
    match: CompiledRule | None,
    is_open: bool,
    held: Hold | None,
) -> _Triage:
    key = DiskKey(domain.name, disk.target)
    rule = match.rule if match is not None else None
    failures = counted(ctx.memory.failures.get(key), disk.fingerprint, ctx.policy.fingerprint)
    count = failures.times
    job = disk.job
    # Without a pull rule a job is foreign and the disk is never touched.
    untouched = _Role.FOREIGN if job is not None else _Role.NONE
    pulling = job is not None and job.type is JobType.PULL

    def triage(
        state: DiskState,
        reason: str,
        role: _Role = untouched,
        base: str | None = None,
        next_attempt_at: datetime | None = None,
        abort: AbortReason | None = None,
    ) -> _Triage:
        return _Triage(
            key, rule, state, reason, len(disk.chain), count, next_attempt_at, role, job, base,
            is_open, disk, abort,
        )  # fmt: skip

    if match is None or rule is None or rule.action is RuleAction.IGNORE:
        why = "no rule selects this disk" if rule is None else f"rule {rule.name} ignores this disk"
        ours = pulling and key in ctx.memory.tracked and domain.state.can_run_jobs
        if ours:  # the daemon's own pull, deselected by a reload
            return triage(
                DiskState.IGNORED, f"pull aborted: {why}", _Role.ABORT, abort=AbortReason.DESELECTED
            )
        return triage(DiskState.IGNORED, why)
    if not domain.state.can_run_jobs:
        if domain.state is DomainState.SHUTOFF:
            why = "domain is shut off; libvirt pulls only running domains"
        else:
            why = f"domain is not running ({domain.state}); libvirt pulls only running domains"
        return triage(DiskState.NOT_RUNNING, why)
    unsupported = _unsupported(disk)
    if unsupported is not None:
        return triage(DiskState.UNSUPPORTED, unsupported)
    base = match.base_in(disk.chain)
    if rule.keep_base is not None and base is None and disk.chain:
        return triage(DiskState.UNSUPPORTED, f"keep_base {rule.keep_base} is not in the chain")
    if job is None:
        if not disk.chain:
            return triage(DiskState.INDEPENDENT, "no backing image is left below the top")
        if base is not None and disk.chain[0] == base:
            return triage(DiskState.INDEPENDENT, f"only the kept base {base} remains below")
    if job is None and key in ctx.memory.tracked:
        # Its pull just vanished and the chain does not show completion yet (libvirt drops
        # the job before it rewrites the chain): starting again now would pull twice.
        return triage(DiskState.PENDING, "waiting for the outcome of its last pull")
    if held is not None:
        until = _datetime_at(held.until, ctx.tz).isoformat(timespec="seconds")
        why = f"{held.describe()}, until {until}"
        if pulling:
            return triage(
                DiskState.HELD, f"pull aborted: {why}", _Role.ABORT, abort=AbortReason.HELD
            )
        return triage(DiskState.HELD, why)
    if job is not None and job.type is JobType.PULL:
        fs = ctx.space.file_system(disk)
        if isinstance(fs, FileSystem) and ctx.space.below_floor(fs):
            why = (
                f"pull aborted: {fs.mountpoint} fell below min_free "
                f"{ctx.policy.defaults.min_free} (something else filled it)"
            )
            return triage(DiskState.WAITING_SPACE, why, _Role.ABORT, abort=AbortReason.LOW_SPACE)
        if is_open:
            return triage(DiskState.PULLING, "pulling", _Role.MANAGED)
        if ctx.policy.defaults.outside_windows is OutsideWindows.PAUSE:
            why = (
                f"pull aborted: the windows of rule {rule.name} are closed "
                "(outside_windows: pause); it resumes when one opens"
            )
            return triage(
                DiskState.WAITING_WINDOW, why, _Role.ABORT, abort=AbortReason.WINDOW_CLOSED
            )
        why = (
            f"pulling; the windows of rule {rule.name} are closed and the pull finishes "
            "outside them (outside_windows: finish)"
        )
        return triage(DiskState.PULLING, why, _Role.MANAGED)
    if job is not None:
        return triage(DiskState.PENDING, f"busy with a {job.type} job")
    retry = ctx.policy.defaults.retry
    if count >= retry.max_attempts:
        why = f"gave up after {count} failed attempts; waits for a disk or policy change"
        return triage(DiskState.GAVE_UP, why)
    wait = NO_WAIT
    if count or ctx.memory.interruptions:
        found = ctx.memory.interruptions.get(key)
        aborted = counted(found, disk.fingerprint, ctx.policy.fingerprint)
        wait = wait_after(retry, failures, aborted)
    if ctx.now_ts < wait.until:
        retry_at = _datetime_at(wait.until, ctx.tz)
        return triage(DiskState.BACKOFF, wait.why, next_attempt_at=retry_at)
    if not is_open:
        names = ", ".join(rule.windows)
        return triage(DiskState.WAITING_WINDOW, f"none of the windows {names} is open")
    return triage(DiskState.PENDING, "waiting for a free slot", _Role.CANDIDATE, base=base)


def _triage_all(ctx: _Context, observation: Observation) -> list[_Triage]:
    selector = selector_for(ctx.policy.rules)
    opened = {r.name: schedule.rule_open(r, ctx.open_windows) for r in ctx.policy.rules}
    out: list[_Triage] = []
    for domain in observation.domains:
        rules = selector.for_domain(domain.name)
        held = ctx.holds.holding(domain.name, ctx.now_ts)
        for disk in domain.disks:
            match = first_match(rules, disk)
            is_open = opened[match.rule.name] if match is not None else False
            item = _triage(ctx, domain, disk, match, is_open, held)
            if ctx.policy.shared and item.role in (_Role.MANAGED, _Role.CANDIDATE):
                item = replace(item, groups=groups_of(ctx.policy.shared, disk))
            out.append(item)
    return out


def _is_lower(new: int | None, old: int | None) -> bool:
    """Whether `new` limits harder than `old` (None = unlimited)."""
    if new is None:
        return False
    return old is None or new < old


def _pending_reason(budget: Budget, alloc: Allocation) -> str:
    if alloc.free_slots > alloc.start:
        return "waiting: the bandwidth budget left cannot give another pull 1 byte/s"
    return f"waiting for a free slot (max_concurrent {budget.max_concurrent})"


def _speed_reason(budget: Budget, pulls: int) -> str:
    if budget.bandwidth is None:
        return "the bandwidth budget is unlimited"
    return f"equal share of the bandwidth budget among {pulls} pull(s)"


def _start_reason(item: _Triage) -> str:
    rule = item.rule.name if item.rule is not None else "?"
    if item.base is None:
        return f"rule {rule}: full pull"
    return f"rule {rule}: pull down to {item.base}"


def _next_wake(
    policy: Policy, now: datetime, decisions: Iterable[DiskDecision], hold_ends: float | None
) -> datetime | None:
    times = [d.next_attempt_at for d in decisions if d.state is DiskState.BACKOFF]
    boundary = schedule.next_boundary(policy, now)
    hold_end = _datetime_at(hold_ends, now.tzinfo) if hold_ends is not None else None
    candidates = [t for t in (*times, boundary, hold_end) if t is not None]
    return min(candidates) if candidates else None


def _key_order(key: DiskKey) -> tuple[str, str]:
    return (key.domain, key.disk)  # DiskKey's own __lt__ is slow


def _reserve_running(ctx: _Context, triaged: list[_Triage]) -> None:
    """What the pulls that keep running may still write, on their file systems."""
    for item in triaged:
        job = item.job
        if job is None or job.type is not JobType.PULL or item.role is _Role.ABORT:
            continue
        fs = ctx.space.file_system(item.disk)
        if isinstance(fs, FileSystem):
            tracked = ctx.memory.tracked.get(item.key)
            ctx.space.reserve(fs, still_to_write(job, tracked.growth if tracked else None))


def _split_by_groups(
    items: list[_Triage], ledger: GroupLedger
) -> tuple[list[_Triage], list[_Triage]]:
    """Running pulls (best first) whose groups all keep a slot for them, and the others."""
    fits: list[_Triage] = []
    refused: list[_Triage] = []
    for item in items:
        (fits if ledger.keep(item.groups) else refused).append(item)
    return fits, refused


def _group_abort(item: _Triage, ledger: GroupLedger) -> tuple[AbortPull, DiskDecision]:
    names = ", ".join(item.groups)
    state = DiskState.PENDING if item.rule_open else DiskState.WAITING_WINDOW
    if ledger.lost(item.groups):
        why = (
            f"pull aborted: the coordination lease of shared group {names} may have expired; "
            "it resumes when the coordination service is back"
        )
        return AbortPull(item.key, AbortReason.COORDINATION_LOST), item.decided(state, why)
    why = f"pull aborted: shared group {names} has no slot left for it on this host"
    return AbortPull(item.key, AbortReason.OVER_BUDGET), item.decided(state, why)


def plan(
    observation: Observation,
    policy: Policy,
    now: datetime,
    memory: Memory,
    *,
    holds: HoldSet = NO_HOLDS,
    state_saved: bool = True,
    allowances: Mapping[str, GroupAllowance] | None = None,
) -> Plan:
    """What to do on the host now, and a state with a reason for every disk.

    `holds`: the operators' holds; `state_saved`: whether the daemon's last save of `memory`
    succeeded (False starts nothing); `allowances`: this host's share of each shared group
    (None: no coordinator, so group pulls do not run).
    """
    open_windows = schedule.open_windows(policy, now)
    budget = schedule.budget_at(policy, open_windows)
    space = SpaceLedger(observation, policy.defaults.min_free)
    ctx = _Context(policy, open_windows, now.timestamp(), now.tzinfo, memory, holds, space)
    triaged = _triage_all(ctx, observation)
    _reserve_running(ctx, triaged)

    foreign = [t.job.bandwidth for t in triaged if t.role is _Role.FOREIGN and t.job is not None]
    all_managed = sorted((t for t in triaged if t.role is _Role.MANAGED), key=lambda t: t.order)
    candidates = sorted((t for t in triaged if t.role is _Role.CANDIDATE), key=lambda t: t.order)
    unsaved: list[_Triage] = []
    if not state_saved:
        unsaved, candidates = candidates, []
    busy, freed = busy_domains(
        (t.key.domain, t.job, t.role is _Role.ABORT) for t in triaged if t.job is not None
    )
    ledger = GroupLedger(allowances or {})
    managed, group_over = _split_by_groups(all_managed, ledger)
    alloc = allocate(budget, foreign, len(managed), len(candidates))
    chosen = choose_starts(
        candidates,
        busy,
        freed,
        alloc.start,
        observation,
        space,
        ledger,
        _pending_reason(budget, alloc),
    )
    kept, over = managed[: alloc.keep], managed[alloc.keep :]
    starting = len(chosen.started) + len(chosen.held)  # held: the next plan makes them
    share = allocate(budget, foreign, len(managed), starting).share
    pulls = len(kept) + starting

    decided: dict[DiskKey, DiskDecision] = {}
    aborts: list[AbortPull] = []
    cuts: list[SetSpeed] = []
    raises: list[SetSpeed] = []
    for item in triaged:
        if item.role is _Role.ABORT and item.abort is not None:
            aborts.append(AbortPull(item.key, item.abort))
    too_many = len(managed) + len(foreign) > budget.max_concurrent
    for item in over:
        aborts.append(AbortPull(item.key, AbortReason.OVER_BUDGET))
        state = DiskState.PENDING if item.rule_open else DiskState.WAITING_WINDOW
        if too_many:
            why = f"pull aborted: more jobs than max_concurrent {budget.max_concurrent} allows"
        else:
            why = "pull aborted: the bandwidth budget left cannot give it 1 byte/s"
        decided[item.key] = item.decided(state, why)
    for item in group_over:
        abort, decision = _group_abort(item, ledger)
        aborts.append(abort)
        decided[item.key] = decision
    limits: dict[DiskKey, int | None] = {}  # what each pull of the daemon's runs at
    for item in kept:
        current = item.job.bandwidth if item.job is not None else None
        limit = limits[item.key] = ledger.limit(item.groups, share)
        if current != limit:
            why = _speed_reason(budget, pulls) if limit == share else "share of its shared group"
            speed = SetSpeed(item.key, limit, why)
            (cuts if _is_lower(limit, current) else raises).append(speed)
    starts = []
    for start in chosen.started:
        item = start.candidate
        limit = limits[item.key] = ledger.limit(item.groups, share)
        starts.append(StartPull(item.key, item.base, limit, _start_reason(item), start.growth))
        decided[item.key] = item.decided(DiskState.PULLING, "starting now")
    for wait in chosen.waiting:
        decided[wait.candidate.key] = wait.candidate.decided(wait.state, wait.reason)
    for start in chosen.held:
        why = "starts once the pull this plan aborts in its domain is gone; one pull per domain"
        decided[start.candidate.key] = start.candidate.decided(DiskState.PENDING, why)
    for item in unsaved:
        why = "waiting: the state cannot be saved, so a restart could not adopt a new pull"
        decided[item.key] = item.decided(DiskState.PENDING, why)
    running = (*kept, *(s.candidate for s in chosen.started))
    waiting = (w.candidate for w in chosen.waiting if w.for_slot)
    uses = group_uses(
        policy.shared,
        ((t.groups, ledger.limit(t.groups, share)) for t in running if t.groups),
        (t.groups for t in waiting),
        budget.max_concurrent,
    )

    decisions = tuple(
        sorted(
            (decided.get(t.key) or t.decided(t.state, t.reason) for t in triaged),
            key=lambda d: (d.key.domain, d.key.disk),  # DiskKey's own __lt__ is slow
        )
    )
    actions: tuple[Action, ...] = (
        *sorted(aborts, key=lambda a: a.key),
        *sorted(cuts, key=lambda a: a.key),
        *starts,
        *sorted(raises, key=lambda a: a.key),
    )
    return Plan(
        actions=actions,
        decisions=decisions,
        budget=budget,
        open_windows=open_windows,
        next_wake=_next_wake(policy, now, decisions, holds.next_expiry(ctx.now_ts)),
        held_starts=tuple(sorted((h.candidate.key for h in chosen.held), key=_key_order)),
        inspect=chosen.inspect,
        space=space.checks(),
        limits=limits,
        groups=uses,
    )
