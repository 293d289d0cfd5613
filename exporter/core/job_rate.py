"""What two reads of a block job's cursor (libvirt's `cur`) say: its rate, and the bytes done."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CursorSample:
    cur: int  # bytes the job had done
    at: float  # when it was read, in monotonic seconds


def rate_between(before: CursorSample, after: CursorSample) -> float | None:
    """Bytes/s between two reads of one disk's job; None when no time passed or the cursor
    went back (another job, or one started again)."""
    elapsed = after.at - before.at
    if elapsed <= 0 or after.cur < before.cur:
        return None
    return (after.cur - before.cur) / elapsed


def bytes_advanced(before: int | None, after: int) -> int:
    """Bytes a disk's job did between a read at `before` and one at `after` (None: no earlier
    read). A cursor that went back belongs to a new job, started at 0, so all of it counts;
    a first read counts nothing: what a job did before the daemon saw it is not known."""
    if before is None:
        return 0
    return after - before if after >= before else after
