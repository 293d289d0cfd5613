"""`plan(observation, policy, now, memory) -> Plan`: what the policy means, as a pure function.

No I/O, no clock reads (`now` is an aware datetime; memory times are epoch seconds compared
with `now.timestamp()`), no randomness; the same inputs give the same plan, actions in the same
order.

1. Selection (`exporter.core.selection`): the first rule in policy order that matches a disk wins.
   No rule: IGNORED, rule None. A rule with `action: ignore`: IGNORED. Neither kind of disk is
   ever touched, even when a job runs on it.

2. Each disk selected by a pull rule gets the first state that applies:
   - domain shut off or in another non-running state: NOT_RUNNING (paused domains can pull);
   - disk read-only, transient or without a source image: UNSUPPORTED;
   - `keep_base` set, the chain not empty and no chain image matching it: UNSUPPORTED;
   - no job running and nothing left to pull (chain empty, or its nearest image is the
     keep_base): INDEPENDENT. A disk with a running job is never done while it runs;
   - no job, but the daemon still tracks the pull it started (its outcome is not proven
     yet): PENDING, never started twice;
   - a pull job runs: the pull is managed (ours, or adopted when started by hand): PULLING;
   - another job type runs: PENDING, "busy with a <type> job"; never touched, takes a slot;
   - failures remembered for the same disk and policy fingerprints (others count as 0):
     count >= max_attempts: GAVE_UP; before last_failure_at + backoff(count): BACKOFF, where
     backoff(n) = min(backoff * 2**(n-1), max_backoff);
   - the rule's windows are all closed: WAITING_WINDOW;
   - otherwise a candidate: PENDING, or PULLING when this plan starts it.
   A job on a disk that is NOT_RUNNING or UNSUPPORTED (even a pull) is foreign, never touched.

3. Aborts. A managed pull whose rule's windows are closed is aborted (WINDOW_CLOSED,
   WAITING_WINDOW) when outside_windows is pause; with finish it keeps running but its rule
   starts nothing new. Managed pulls that do not fit the budget (see `exporter.core.bandwidth`) are
   aborted (OVER_BUDGET), worst-ordered first; they become PENDING (or WAITING_WINDOW when
   their rule is closed). Pulls are never aborted to make room for a higher priority candidate.

4. One pull per domain: a candidate whose domain already runs a pull (or gets one in this
   plan) waits, PENDING: QEMU 7.2 crashes the guest when two pulls of one domain finish
   together. A candidate whose domain this plan frees by aborting every pull in it (closed
   windows) is held, PENDING: it takes its slot and share, and `Plan.held_starts` names it;
   the next plan, on the host after acting, starts it (and nothing else), so the only start
   that waits for another plan is one behind an abort in its own domain. The controller
   plans again at once after such a plan.
   While the daemon cannot save its state (`state_saved` False) no candidate
   starts: a restart could not adopt the pull. They wait, PENDING; running pulls go on.
   Budget: the host budget in force (`schedule.budget_at`). Foreign jobs (every job on a disk
   that is not a managed pull) take a slot each and their bandwidth limit; candidates start in
   order priority desc, domain, disk, while slots and bandwidth last; every managed pull gets
   the same share (`exporter.core.bandwidth.allocate`). SetSpeed is emitted only where a kept pull's
   limit differs from its share (None = unlimited, for both). A foreign job without a
   limit is counted as 0 bytes/s (its rate is unknowable). A share is at least 1 byte/s, so
   at most `available` bytes/s worth of pulls run: fewer start, and kept pulls beyond that are
   aborted (OVER_BUDGET) - the aggregate of limits never exceeds the budget.

   Shared groups (`exporter.core.shared`): a group pull also needs a slot of every group it
   is in, as this host's allowance grants; running group pulls without one are aborted
   (COORDINATION_LOST when the allowance is lost, OVER_BUDGET otherwise), candidates without
   one wait and leave the host slot to the next candidate, and a group pull's limit is the
   lowest of the host share and its groups' shares. Pulls outside every group are unaffected.

5. Actions come in an order that keeps the aggregate within the budget when applied one by
   one: aborts, speed cuts, starts (best first), speed raises. Aborts and speed changes are
   sorted by key.

6. Every disk gets one DiskDecision; decisions are sorted by key. `next_wake` is the earliest
   of the next window boundary and the end of any BACKOFF.
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
from exporter.core.memory import Memory
from exporter.core.model import BlockJob, Disk, DiskKey, Domain, DomainState, JobType, Observation
from exporter.core.selection import CompiledRule, first_match, selector_for
from exporter.core.shared import GroupAllowance, GroupLedger, group_uses, groups_of
from exporter.policy.values import Budget, OutsideWindows, Policy, Retry, Rule, RuleAction

__all__ = ["backoff_delay", "plan"]


class _Role(Enum):
    """What the planner may do with a disk, beyond the state it reports."""

    NONE = "none"  # no job and nothing to start
    FOREIGN = "foreign"  # a job the planner never touches; takes a slot and its bandwidth
    MANAGED = "managed"  # a pull the planner owns: keep, throttle or abort
    CLOSE = "close"  # a managed pull to abort because its windows closed (pause)
    CANDIDATE = "candidate"  # may start if slots and bandwidth allow


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


def backoff_delay(retry: Retry, count: int) -> float:
    """Seconds to wait after `count` consecutive failures: doubling, capped at max_backoff."""
    if count <= 0:
        return 0.0
    # 2.0**1000 is finite and float products overflow to inf, not an error: the cap wins.
    return min(retry.backoff * 2.0 ** min(count - 1, 1000), retry.max_backoff)


def _datetime_at(ts: float, tz: tzinfo | None) -> datetime:
    try:
        return datetime.fromtimestamp(ts, tz)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=tz)


def _effective_failures(ctx: _Context, key: DiskKey, disk: Disk) -> tuple[int, float]:
    failures = ctx.memory.failures.get(key)
    if failures is None:
        return 0, 0.0
    if failures.disk_fingerprint != disk.fingerprint:
        return 0, 0.0
    if failures.policy_fingerprint != ctx.policy.fingerprint:
        return 0, 0.0
    return failures.count, failures.last_failure_at


def _unsupported(disk: Disk) -> str | None:
    if disk.readonly:
        return "disk is read-only; a pull writes into the top image"
    if disk.transient:
        return "disk is transient; its top image is thrown away when the domain stops"
    if disk.source is None:
        return "disk has no source image to pull into"
    return None


def _triage(
    ctx: _Context, domain: Domain, disk: Disk, match: CompiledRule | None, is_open: bool
) -> _Triage:
    key = DiskKey(domain.name, disk.target)
    rule = match.rule if match is not None else None
    count, last_failure = _effective_failures(ctx, key, disk)
    job = disk.job
    # Without a pull rule a job is foreign and the disk is never touched.
    untouched = _Role.FOREIGN if job is not None else _Role.NONE

    def triage(
        state: DiskState,
        reason: str,
        role: _Role = untouched,
        base: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> _Triage:
        return _Triage(
            key, rule, state, reason, len(disk.chain), count, next_attempt_at, role, job, base,
            is_open,
        )  # fmt: skip

    if match is None or rule is None:
        return triage(DiskState.IGNORED, "no rule selects this disk")
    if rule.action is RuleAction.IGNORE:
        return triage(DiskState.IGNORED, f"rule {rule.name} ignores this disk")
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
    if job is not None and job.type is JobType.PULL:
        if is_open:
            return triage(DiskState.PULLING, "pulling", _Role.MANAGED)
        if ctx.policy.defaults.outside_windows is OutsideWindows.PAUSE:
            why = (
                f"pull aborted: the windows of rule {rule.name} are closed "
                "(outside_windows: pause); it resumes when one opens"
            )
            return triage(DiskState.WAITING_WINDOW, why, _Role.CLOSE)
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
    if count > 0:
        retry_at = last_failure + backoff_delay(retry, count)
        if ctx.now_ts < retry_at:
            why = f"failed {count} time(s); waiting before the next attempt"
            return triage(DiskState.BACKOFF, why, next_attempt_at=_datetime_at(retry_at, ctx.tz))
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
        for disk in domain.disks:
            match = first_match(rules, disk)
            is_open = opened[match.rule.name] if match is not None else False
            item = _triage(ctx, domain, disk, match, is_open)
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


def _next_wake(policy: Policy, now: datetime, decisions: Iterable[DiskDecision]) -> datetime | None:
    times = [d.next_attempt_at for d in decisions if d.state is DiskState.BACKOFF]
    boundary = schedule.next_boundary(policy, now)
    candidates = [t for t in (*times, boundary) if t is not None]
    return min(candidates) if candidates else None


def _one_pull_per_domain(
    triaged: list[_Triage],
) -> tuple[list[_Triage], list[_Triage], frozenset[str]]:
    """Candidates in order, at most one per domain and none where a pull keeps running; the
    candidates deferred for it; the domains whose every pull this plan aborts (closed windows).

    QEMU 7.2 (Debian 12) segfaults, killing the guest, when two block-stream jobs of one
    domain finish at about the same moment; equal shares make that likely. One pull per
    domain at a time rules it out, at no cost to the host-wide throughput.

    A candidate in a domain this plan frees by aborting takes its slot and share now but is
    held, not started: the next plan starts it once a fresh observation shows the aborted pull
    gone (the controller plans again at once). Starting it in this plan, right behind the
    abort, is safe only if the abort is known to have ended the old job. libvirt's synchronous
    abort (the adapter passes no ASYNC flag) returns once QEMU has cancelled it, but the
    controller applies the rest of a plan when an abort fails: a timeout, a dropped
    connection, or "no active block job" from a pull that was completing at that moment, whose
    completion would then overlap the new pull's start. A re-read proves the domain free, at
    the cost of one more observe per window boundary that holds a start.
    """
    pulls: dict[str, list[_Triage]] = {}
    for t in triaged:
        if t.job is not None and t.job.type is JobType.PULL:
            pulls.setdefault(t.key.domain, []).append(t)
    freed = frozenset(
        name for name, jobs in pulls.items() if all(t.role is _Role.CLOSE for t in jobs)
    )
    busy = set(pulls) - freed
    chosen: list[_Triage] = []
    deferred: list[_Triage] = []
    for item in sorted((t for t in triaged if t.role is _Role.CANDIDATE), key=lambda t: t.order):
        if item.key.domain in busy:
            deferred.append(item)
        else:
            chosen.append(item)
            busy.add(item.key.domain)
    return chosen, deferred, freed


def _split_by_groups(
    items: list[_Triage], ledger: GroupLedger, starting: bool
) -> tuple[list[_Triage], list[tuple[_Triage, str]]]:
    """Items (in order) whose groups all have a slot for them, and the others with why not."""
    fits: list[_Triage] = []
    refused: list[tuple[_Triage, str]] = []
    for item in items:
        if not item.groups:
            fits.append(item)
            continue
        why = ledger.refusal(item.groups) if starting else ""
        if ledger.start(item.groups) if starting else ledger.keep(item.groups):
            fits.append(item)
        else:
            refused.append((item, why))
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
    state_saved: bool = True,
    allowances: Mapping[str, GroupAllowance] | None = None,
) -> Plan:
    """What to do on the host now, and a state with a reason for every disk.

    `state_saved`: whether the daemon's last save of `memory` succeeded; False starts nothing.
    `allowances`: this host's share of each shared group (None: no coordinator, so group
    pulls do not run).
    """
    open_windows = schedule.open_windows(policy, now)
    budget = schedule.budget_at(policy, open_windows)
    ctx = _Context(policy, open_windows, now.timestamp(), now.tzinfo, memory)
    triaged = _triage_all(ctx, observation)

    foreign = [t.job.bandwidth for t in triaged if t.role is _Role.FOREIGN and t.job is not None]
    all_managed = sorted((t for t in triaged if t.role is _Role.MANAGED), key=lambda t: t.order)
    all_candidates, same_domain, freed = _one_pull_per_domain(triaged)
    unsaved: list[_Triage] = []
    if not state_saved:
        unsaved, all_candidates = all_candidates, []
    ledger = GroupLedger(allowances or {})
    managed, group_over = _split_by_groups(all_managed, ledger, starting=False)
    candidates, group_waiting = _split_by_groups(all_candidates, ledger, starting=True)
    alloc = allocate(budget, foreign, len(managed), len(candidates))
    kept, over = managed[: alloc.keep], managed[alloc.keep :]
    started = [t for t in candidates[: alloc.start] if t.key.domain not in freed]
    held = [t for t in candidates[: alloc.start] if t.key.domain in freed]
    share = alloc.share
    pulls = len(kept) + alloc.start  # held starts included: the next plan makes them

    decided: dict[DiskKey, DiskDecision] = {}
    aborts: list[AbortPull] = []
    cuts: list[SetSpeed] = []
    raises: list[SetSpeed] = []
    for item in triaged:
        if item.role is _Role.CLOSE:
            aborts.append(AbortPull(item.key, AbortReason.WINDOW_CLOSED))
    too_many = len(managed) + len(foreign) > budget.max_concurrent
    for item in over:
        aborts.append(AbortPull(item.key, AbortReason.OVER_BUDGET))
        state = DiskState.PENDING if item.rule_open else DiskState.WAITING_WINDOW
        if too_many:
            why = f"pull aborted: more jobs than max_concurrent {budget.max_concurrent} allows"
        else:
            why = "pull aborted: the bandwidth budget left cannot give it 1 byte/s"
        decided[item.key] = item.decided(state, why)
    for item, _ in group_over:
        abort, decision = _group_abort(item, ledger)
        aborts.append(abort)
        decided[item.key] = decision
    for item in kept:
        current = item.job.bandwidth if item.job is not None else None
        limit = ledger.limit(item.groups, share)
        if current != limit:
            why = _speed_reason(budget, pulls) if limit == share else "share of its shared group"
            speed = SetSpeed(item.key, limit, why)
            (cuts if _is_lower(limit, current) else raises).append(speed)
    starts = [
        StartPull(t.key, t.base, ledger.limit(t.groups, share), _start_reason(t)) for t in started
    ]
    for item in started:
        decided[item.key] = item.decided(DiskState.PULLING, "starting now")
    for item in held:
        why = "starts once the pull this plan aborts in its domain is gone; one pull per domain"
        decided[item.key] = item.decided(DiskState.PENDING, why)
    waiting = _pending_reason(budget, alloc)
    for item in candidates[alloc.start :]:
        decided[item.key] = item.decided(DiskState.PENDING, waiting)
    for item in same_domain:
        why = "another disk of this domain is pulling; one pull per domain at a time"
        decided[item.key] = item.decided(DiskState.PENDING, why)
    for item in unsaved:
        why = "waiting: the state cannot be saved, so a restart could not adopt a new pull"
        decided[item.key] = item.decided(DiskState.PENDING, why)
    for item, why in group_waiting:
        decided[item.key] = item.decided(DiskState.PENDING, why)
    uses = group_uses(
        policy.shared,
        ((t.groups, ledger.limit(t.groups, share)) for t in (*kept, *started) if t.groups),
        (t.groups for t in (*candidates[alloc.start :], *(w for w, _ in group_waiting))),
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
        next_wake=_next_wake(policy, now, decisions),
        held_starts=tuple(sorted((t.key for t in held), key=lambda k: (k.domain, k.disk))),
        groups=uses,
    )
