"""What `plan()` decides: actions for the host and a state with a reason for every disk."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from exporter.core.model import DiskKey
from exporter.core.shared import GroupUse
from exporter.core.space import SpaceCheck
from exporter.policy.values import Budget


class DiskState(StrEnum):
    INDEPENDENT = "independent"  # nothing left to pull (or only the keep_base remains)
    PENDING = "pending"  # selected, allowed now, waiting for a free slot
    PULLING = "pulling"
    WAITING_WINDOW = "waiting_window"  # selected, none of its rule's windows is open
    BACKOFF = "backoff"  # failed, waiting before the next attempt
    GAVE_UP = "gave_up"  # failed max_attempts times; waits for a policy or disk change
    WAITING_SPACE = "waiting_space"  # a pull now would leave its file system below min_free
    HELD = "held"  # an operator's hold is on the domain (`blockpull-exporter hold`)
    NOT_RUNNING = "not_running"  # domain shut off: libvirt pulls only on running domains
    UNSUPPORTED = "unsupported"  # read-only, transient, no source, keep_base not in chain
    IGNORED = "ignored"  # matched by an `action: ignore` rule


class AbortReason(StrEnum):
    WINDOW_CLOSED = "window_closed"  # outside_windows: pause
    OVER_BUDGET = "over_budget"  # max_concurrent lowered below the running pulls
    SHUTDOWN = "shutdown"  # daemon told to abort on exit
    DOMAIN_STOPPED = "domain_stopped"  # seen on re-read: domain gone or shut off mid-pull
    EXTERNAL = "external"  # job vanished, chain unchanged, no failure event: canceled by others
    LOW_SPACE = "low_space"  # its file system fell below min_free (filled by something else)
    HELD = "held"  # an operator put a hold on the domain
    DESELECTED = "deselected"  # a reloaded policy no longer selects the disk, or ignores it
    COORDINATION_LOST = "coordination_lost"  # a shared group's lease may have expired


@dataclass(frozen=True)
class StartPull:
    key: DiskKey
    base: str | None  # keep this image and everything below it; None = full pull
    bandwidth: int | None  # bytes/s; None = unlimited
    reason: str
    growth: int | None = None  # the most it writes to its file system; None: not guarded


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
    next_wake: datetime | None  # next window boundary, backoff or hold expiry; None = no timer
    # Starts held back behind this plan's own aborts in their domains (one pull per domain):
    # the next plan, on the host after acting, makes exactly these; the controller plans again
    # at once when there are any. Sorted.
    held_starts: tuple[DiskKey, ...] = ()
    # Domains to read in full (every disk's job, each chain's usage) before a pull may start
    # there: plan again with `Observation.with_inspections` of them.
    inspect: frozenset[str] = frozenset()
    space: tuple[SpaceCheck, ...] = ()  # the file systems the min_free guard measured
    # The limit each pull of the daemon's runs at (bytes/s; None: unlimited), by disk.
    limits: Mapping[DiskKey, int | None] = field(default_factory=dict)
    groups: tuple[GroupUse, ...] = ()  # this host's part in each shared group, policy order
