"""Which domains get every chained disk's block job read on this observe.

A job somebody else started (`virsh blockpull`) shows in no event and in no live XML, so
LibvirtHost reads blockJobInfo for every disk on a backing chain once per sweep interval.
Read all at once, those reads cost more than the rest of a full reconcile on a big host
(bench/RESULTS.md). So the sweep is cut into parts by a hash of the domain's UUID: after a full
sweep (the first observe, and the first after every reconnection) part k falls due (k + 1)
parts' worth of the interval later, then once per interval; the controller calls
`LibvirtHost.sweep_jobs` when the next part is due (`next_due`): with a 50 s sweep, a tenth
of the disks every 5 s, and every disk within a minute.
"""

from __future__ import annotations

import zlib

DEFAULT_PARTS = 10


class JobSweep:
    """Mutable schedule owned by one LibvirtHost; every domain's part is read once per
    `interval` at the latest (later only when no observe happens in between)."""

    def __init__(self, interval: float, parts: int = DEFAULT_PARTS) -> None:
        if parts < 1 or interval < 0:
            raise ValueError(f"a sweep needs parts >= 1 and interval >= 0, not {parts}, {interval}")
        self._interval = interval
        self._parts = parts
        self._due = [0.0] * parts

    def restart(self) -> None:
        """Every part due at the next observe: jobs may have come or gone unseen."""
        self._due = [0.0] * self._parts

    def due(self, now: float) -> frozenset[int]:
        """The parts to read now; each of them next falls due later."""
        due = frozenset(part for part, at in enumerate(self._due) if now >= at)
        full = len(due) == self._parts
        for part in due:
            share = (part + 1) / self._parts if full else 1.0  # spread the next ones out
            self._due[part] = now + self._interval * share
        return due

    def next_due(self) -> float:
        """When the next part falls due."""
        return min(self._due)

    def part(self, uuid: str) -> int:
        """Stable across observes, restarts and renames."""
        return zlib.crc32(uuid.encode()) % self._parts
