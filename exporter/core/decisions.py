"""What `plan()` decides: actions for the host and a state with a reason for every disk."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from exporter.core.model import DiskKey
from exporter.core.shared import GroupUse
from exporter.policy.values import Budget


class DiskState(StrEnum):
    INDEPENDENT = "independent"  # nothing left to pull (or only the keep_base remains)
    PENDING = "pending"  # selected, allowed now, waiting for a free slot
    PULLING = "pulling"
    WAITING_WINDOW = "waiting_window"  # selected, none of its rule's windows is open
    BACKOFF = "backoff"  # failed, waiting before the next attempt
    GAVE_UP = "gave_up"  # failed max_attempts times; waits for a policy or disk change
    NOT_RUNNING = "not_running"  # domain shut off: libvirt pulls only on running domains
    UNSUPPORTED = "unsupported"  # read-only, transient, no source, keep_base not in chain
    IGNORED = "ignored"  # matched by an `action: ignore` rule


class AbortReason(StrEnum):
    WINDOW_CLOSED = "window_closed"  # outside_windows: pause
    OVER_BUDGET = "over_budget"  # max_concurrent lowered below the running pulls
    SHUTDOWN = "shutdown"  # daemon told to abort on exit
    DOMAIN_STOPPED = "domain_stopped"  # seen on re-read: domain gone or shut off mid-pull
    EXTERNAL = "external"  # job vanished, chain unchanged, no failure event: canceled by others
    COORDINATION_LOST = "coordination_lost"  # a shared group's lease may have expired


@dataclass(frozen=True)
class StartPull:
    key: DiskKey
    base: str | None  # keep this image and everything below it; None = full pull
    bandwidth: int | None  # bytes/s; None = unlimited
    reason: str


@dataclass(frozen=True)
class SetSpeed:
    key: DiskKey
    bandwidth: int | None
    reason: str


@dataclass(frozen=True)
class AbortPull:
    key: DiskKey
    reason: AbortReason


Action = StartPull | SetSpeed | AbortPull


@dataclass(frozen=True)
class DiskDecision:
    key: DiskKey
    rule: str | None  # None: no rule selects this disk (it is never touched)
    state: DiskState
    reason: str  # one human sentence: why this state
    priority: int
    depth: int  # images in the backing chain below the top
    consecutive_failures: int
    next_attempt_at: datetime | None  # for BACKOFF


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]  # in the order to apply: aborts, speed cuts, starts, speed raises
    decisions: tuple[DiskDecision, ...]  # sorted by key
    budget: Budget  # the budget in force at `now`
    open_windows: frozenset[str]
    next_wake: datetime | None  # next window boundary or backoff expiry; None = nothing timed
    # Starts held back behind this plan's own aborts in their domains (one pull per domain):
    # the next plan, on the host after acting, makes exactly these; the controller plans again
    # at once when there are any. Sorted.
    held_starts: tuple[DiskKey, ...] = ()
    groups: tuple[GroupUse, ...] = ()  # this host's part in each shared group, policy order
