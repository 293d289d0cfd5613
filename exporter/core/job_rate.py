"""A block job's rate, measured from two reads of its cursor (libvirt's `cur`)."""

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
