"""When a disk may be tried again: after failures, and after pulls somebody else aborted.

Pure arithmetic on the memory's records (`exporter.core.memory.Failures`). A record counts only
while it is about the same disk (its fingerprint) under the same policy; the wait doubles with
each one, capped at `max_backoff`. Failures make a disk give up after `max_attempts`; aborts by
someone else never do (the planner decides that, this module only says how long to wait).
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.core.memory import Failures
from exporter.policy.values import Retry


@dataclass(frozen=True)
class Count:
    times: int  # 0: no record that counts
    last: float  # epoch seconds of the last one


NONE = Count(0, 0.0)


@dataclass(frozen=True)
class Wait:
    until: float  # epoch seconds; 0 = no wait
    why: str


NO_WAIT = Wait(0.0, "")


def backoff_delay(retry: Retry, count: int) -> float:
    """Seconds to wait after `count` consecutive failures: doubling, capped at max_backoff."""
    if count <= 0:
        return 0.0
    # 2.0**1000 is finite and float products overflow to inf, not an error: the cap wins.
    return min(retry.backoff * 2.0 ** min(count - 1, 1000), retry.max_backoff)


def counted(found: Failures | None, disk_fingerprint: str, policy_fingerprint: str) -> Count:
    """A record's count and time, if it is about this disk under this policy (else none)."""
    if found is None:
        return NONE
    if (found.disk_fingerprint, found.policy_fingerprint) != (disk_fingerprint, policy_fingerprint):
        return NONE
    return Count(found.count, found.last_failure_at)


def wait_after(retry: Retry, failures: Count, interruptions: Count) -> Wait:
    """Until when a disk waits after its failures and the pulls others aborted, and why."""
    until, why = 0.0, ""
    if failures.times > 0:
        until = failures.last + backoff_delay(retry, failures.times)
        why = f"failed {failures.times} time(s); waiting before the next attempt"
    aborted = interruptions.last + backoff_delay(retry, interruptions.times)
    if interruptions.times > 0 and aborted > until:
        until = aborted
        why = (
            f"its pull was aborted by someone else {interruptions.times} time(s); "
            "waiting before the next attempt"
        )
    return Wait(until, why)
