"""Which candidates start now: the planner's last step before it writes actions. Pure.

Candidates go in order (priority desc, domain, disk) while the budget has slots:

1. One pull per domain: a candidate whose domain runs any block job (or gets a pull in this
   plan) waits, PENDING: QEMU 7.2 crashes the guest when two pulls of one domain finish
   together, and a job somebody else runs there is his business.
2. Free space (`exporter.core.space`): with the guard on, a candidate whose file system cannot
   be measured, or has nothing to spare even before its own growth, waits (WAITING_SPACE).
3. A full read of its domain (`Observation.inspections`): the sweep may not have seen a job
   somebody else started on another of its disks, and only this read says how much the pull
   will write. A candidate without one takes its slot and asks for it (`Starts.inspect`); the
   controller reads those domains and plans again, so the pull starts in the same reconcile.
4. With its growth known, it starts only if its file system keeps `min_free` free after it and
   after the pulls running or starting there; otherwise it waits (WAITING_SPACE) and the next
   candidate may take the slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.core.decisions import DiskState
from exporter.core.model import Disk, DiskKey, FileSystem, Observation, Unmeasured
from exporter.core.space import SpaceLedger
from exporter.policy.units import format_size


@dataclass(frozen=True)
class Candidate:
    key: DiskKey
    disk: Disk
    base: str | None  # keep_base image, None for a full pull


@dataclass(frozen=True)
class Waiting:
    key: DiskKey
    state: DiskState
    reason: str


@dataclass(frozen=True)
class Start:
    candidate: Candidate
    growth: int | None  # what it may write to its file system; None outside the guard


@dataclass(frozen=True)
class Starts:
    started: tuple[Start, ...]  # best first
    waiting: tuple[Waiting, ...]
    inspect: frozenset[str]  # domains to read in full, then plan again


CHECKING = "reading every disk of its domain before starting (one pull per domain)"


def choose_starts(
    candidates: Sequence[Candidate],
    busy: Mapping[str, str],
    slots: int,
    observation: Observation,
    space: SpaceLedger,
    no_slot: str,
) -> Starts:
    """`candidates` best first; `busy` names each domain that runs a job, and why it waits;
    `slots` is how many may start; `no_slot` the reason for those beyond them."""
    taken = dict(busy)
    started: list[Start] = []
    waiting: list[Waiting] = []
    inspect: set[str] = set()
    for item in candidates:
        domain = item.key.domain
        if domain in taken:
            waiting.append(Waiting(item.key, DiskState.PENDING, taken[domain]))
            continue
        if slots <= 0:
            waiting.append(Waiting(item.key, DiskState.PENDING, no_slot))
            continue
        fs = space.file_system(item.disk)
        short = _no_room(space, fs)
        if short is not None:
            waiting.append(Waiting(item.key, DiskState.WAITING_SPACE, short))
            continue
        inspection = observation.inspections.get(domain)
        if inspection is None:
            inspect.add(domain)
            waiting.append(Waiting(item.key, DiskState.PENDING, CHECKING))
            taken[domain] = "another disk of this domain is about to pull"
            slots -= 1
            continue
        growth: int | None = None
        if isinstance(fs, FileSystem):
            usage = inspection.usage.get(item.disk.target)
            if usage is None:
                why = "waiting: libvirt did not say how much its backing images hold"
                waiting.append(Waiting(item.key, DiskState.WAITING_SPACE, why))
                continue
            growth = usage.growth(item.disk.chain, item.base)
            if growth > space.spare(fs):
                waiting.append(
                    Waiting(item.key, DiskState.WAITING_SPACE, _too_big(space, fs, growth))
                )
                continue
            space.reserve(fs, growth)
        started.append(Start(item, growth))
        taken[domain] = "another disk of this domain is pulling; one pull per domain at a time"
        slots -= 1
    return Starts(tuple(started), tuple(waiting), frozenset(inspect))


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
