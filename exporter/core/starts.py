"""Which candidates start now: the planner's last step before it writes actions. Pure.

Candidates go in order (priority desc, domain, disk) while the budget has slots:

1. One pull per domain: a candidate whose domain runs any block job (or gets a pull in this
   plan) waits, PENDING: QEMU 7.2 crashes the guest when two pulls of one domain finish
   together, and a job somebody else runs there is his business. One in a domain this plan
   frees by aborting every job there is held (`Starts.held`): it takes its slot, share and
   free space, and the next plan, on a host that shows the abort done, starts it.
2. Free space (`exporter.core.space`): with the guard on, a candidate whose file system cannot
   be measured, or has nothing to spare even before its own growth, waits (WAITING_SPACE).
3. Shared groups (`exporter.core.shared`): a group candidate also takes a slot of each of its
   groups, as this host's allowance grants; without one it waits and the next candidate may
   take the host slot. Only a candidate that gets this far takes group slots, and one that
   then waits for space gives them back: a group slot is never held by a pull that does not
   start (or is not about to, after the read of its domain).
4. A full read of its domain (`Observation.inspections`): the sweep may not have seen a job
   somebody else started on another of its disks, and only this read says how much the pull
   will write. A candidate without one takes its slot and asks for it (`Starts.inspect`); the
   controller reads those domains and plans again, so the pull starts in the same reconcile.
   One whose domain libvirt could not read (`Observation.unread`) waits without a slot.
5. With its growth known, it starts only if its file system keeps `min_free` free after it and
   after the pulls running or starting there; otherwise it waits (WAITING_SPACE) and the next
   candidate may take the slot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from exporter.core.decisions import DiskState
from exporter.core.model import (
    BlockJob,
    Disk,
    DiskKey,
    FileSystem,
    JobType,
    Observation,
    Unmeasured,
)
from exporter.core.shared import GroupLedger
from exporter.core.space import SpaceLedger
from exporter.policy.units import format_size


class Candidate(Protocol):
    """What a candidate must say (the planner's own triage of the disk does)."""

    @property
    def key(self) -> DiskKey: ...
    @property
    def disk(self) -> Disk: ...
    @property
    def base(self) -> str | None: ...  # keep_base image, None for a full pull
    @property
    def groups(self) -> tuple[str, ...]: ...  # shared groups it is in


C = TypeVar("C", bound=Candidate)


@dataclass(frozen=True)
class Waiting(Generic[C]):
    candidate: C
    state: DiskState
    reason: str
    for_slot: bool = False  # it would start with a free slot (the host's or a group's)


@dataclass(frozen=True)
class Start(Generic[C]):
    candidate: C
    growth: int | None  # what it may write to its file system; None outside the guard


@dataclass(frozen=True)
class Starts(Generic[C]):
    started: tuple[Start[C], ...]  # best first
    held: tuple[Start[C], ...]  # would start, but behind this plan's abort in their domain
    waiting: tuple[Waiting[C], ...]
    inspect: frozenset[str]  # domains to read in full, then plan again


CHECKING = "reading every disk of its domain before starting (one pull per domain)"
UNREAD = (
    "waiting: libvirt could not read the block jobs of every disk of its domain; "
    "read again at the next resync"
)


def busy_domains(
    jobs: Iterable[tuple[str, BlockJob, bool]],
) -> tuple[dict[str, str], frozenset[str]]:
    """From (domain, job, aborted by this plan) of every running job: the domains where a job
    goes on, with why a candidate there waits; and the domains this plan frees by aborting
    every job in them.

    QEMU 7.2 (Debian 12) segfaults, killing the guest, when two block-stream jobs of one
    domain finish at about the same moment; equal shares make that likely. One pull per
    domain at a time rules it out, at no cost to the host-wide throughput; and a domain where
    somebody else runs a job of any kind is left to him until it ends.

    A candidate in a domain this plan frees is held, not started: the next plan starts it once
    a fresh observation shows the aborted pull gone (the controller plans again at once).
    Starting it right behind the abort is safe only if the abort is known to have ended the old
    job. libvirt's synchronous abort (the adapter passes no ASYNC flag) returns once QEMU has
    cancelled it, but the controller applies the rest of a plan when an abort fails: a timeout,
    a dropped connection, or "no active block job" from a pull that was completing at that
    moment, whose completion would then overlap the new pull's start. A re-read proves the
    domain free, at the cost of one more observe per plan that holds a start.
    """
    why: dict[str, str] = {}
    going_on: set[str] = set()
    for domain, job, aborted in jobs:
        if not aborted:
            going_on.add(domain)
        if domain not in why:
            why[domain] = (
                "another disk of this domain is pulling; one pull per domain"
                if job.type is JobType.PULL
                else f"another disk of this domain runs a {job.type} job"
            )
    freed = frozenset(why.keys() - going_on)
    return {d: reason for d, reason in why.items() if d not in freed}, freed


def choose_starts(
    candidates: Sequence[C],
    busy: Mapping[str, str],
    freed: frozenset[str],
    slots: int,
    observation: Observation,
    space: SpaceLedger,
    groups: GroupLedger,
    no_slot: str,
) -> Starts[C]:
    """`candidates` best first; `busy` names each domain that runs a job, and why it waits;
    `freed` the domains whose every job this plan aborts; `slots` is how many may start;
    `groups` the shared groups' slots, running pulls' already taken; `no_slot` the reason for
    those beyond the host's slots."""
    taken = dict(busy)
    started: list[Start[C]] = []
    held: list[Start[C]] = []
    waiting: list[Waiting[C]] = []
    inspect: set[str] = set()
    for item in candidates:
        domain = item.key.domain
        if domain in taken:
            waiting.append(Waiting(item, DiskState.PENDING, taken[domain]))
            continue
        if slots <= 0:
            waiting.append(Waiting(item, DiskState.PENDING, no_slot, for_slot=True))
            continue
        fs = space.file_system(item.disk)
        short = _no_room(space, fs)
        if short is not None:
            waiting.append(Waiting(item, DiskState.WAITING_SPACE, short))
            continue
        if not groups.start(item.groups):  # refused: nothing taken, so refusal() says why
            why = groups.refusal(item.groups)
            waiting.append(Waiting(item, DiskState.PENDING, why, for_slot=True))
            continue
        inspection = observation.inspections.get(domain)
        if inspection is None and domain in observation.unread:
            groups.release(item.groups)
            waiting.append(Waiting(item, DiskState.PENDING, UNREAD))
            continue
        if inspection is None:
            inspect.add(domain)
            waiting.append(Waiting(item, DiskState.PENDING, CHECKING))
            taken[domain] = "another disk of this domain is about to pull"
            slots -= 1
            continue
        growth: int | None = None
        if isinstance(fs, FileSystem):
            usage = inspection.usage.get(item.disk.target)
            if usage is None:
                groups.release(item.groups)
                why = "waiting: libvirt did not say how much its backing images hold"
                waiting.append(Waiting(item, DiskState.WAITING_SPACE, why))
                continue
            growth = usage.growth(item.disk.chain, item.base)
            if growth > space.spare(fs):
                groups.release(item.groups)
                waiting.append(Waiting(item, DiskState.WAITING_SPACE, _too_big(space, fs, growth)))
                continue
            space.reserve(fs, growth)
        (held if domain in freed else started).append(Start(item, growth))
        taken[domain] = "another disk of this domain is pulling; one pull per domain at a time"
        slots -= 1
    return Starts(tuple(started), tuple(held), tuple(waiting), frozenset(inspect))


def _no_room(space: SpaceLedger, fs: FileSystem | Unmeasured | None) -> str | None:
    """Why no pull can start on `fs` whatever it writes, or None."""
    if fs is None:
        return None
    if isinstance(fs, Unmeasured):
        return f"waiting: cannot measure the free space of {fs.directory}: {fs.error}"
    if space.spare(fs) < 0:
        return _too_big(space, fs, 0)
    return None


def _too_big(space: SpaceLedger, fs: FileSystem, growth: int) -> str:
    reserved = fs.free - space.floor(fs) - space.spare(fs)
    parts = [f"{format_size(fs.free)} free on {fs.mountpoint}"]
    if growth:
        parts.append(f"this pull may write {format_size(growth)}")
    if reserved:
        parts.append(f"running pulls {format_size(reserved)}")
    parts.append(f"min_free keeps {format_size(space.floor(fs))}")
    return "waiting for free space: " + ", ".join(parts)
