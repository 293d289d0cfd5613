"""How the host budget is split between running pulls: slots first, then bandwidth.

Pure arithmetic, separate from rule semantics so it can be reasoned about (and tested) alone.

- Slots: foreign jobs (every block job the planner does not manage) take a slot each. Managed
  pulls beyond `max_concurrent - foreign` must stop; the free slots left go to new pulls.
- Bandwidth: foreign jobs with a limit subtract it from the budget. A foreign job without one
  (None, unlimited) takes a slot but its real rate is unknowable: it is counted as 0 bytes/s.
  Every managed pull gets the same share, `available // pulls`, which depends only on the
  number of pulls, so planning again after applying the plan yields the same share.
- A share must be at least 1 byte/s (a limit is never 0), so at most `available` pulls can
  run: fewer new pulls start, and if even the kept pulls do not fit, the extras stop too.
  The aggregate of managed limits plus foreign limits never exceeds the budget (unless
  foreign limits alone do, and then no managed pull runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exporter.policy.values import Budget


@dataclass(frozen=True)
class Allocation:
    keep: int  # how many of the running managed pulls (best first) keep running
    start: int  # how many of the candidates (best first) start now
    share: int | None  # bytes/s for each managed pull; None = unlimited
    available: int | None  # bytes/s left to managed pulls after foreign limits; None = unlimited
    free_slots: int  # slots left after keeping pulls and foreign jobs, before starts


def allocate(
    budget: Budget, foreign: Iterable[int | None], running: int, candidates: int
) -> Allocation:
    """Split `budget` given foreign jobs' bandwidths (None = unlimited) and managed pull counts."""
    foreign_bandwidths = tuple(foreign)
    slots = max(0, budget.max_concurrent - len(foreign_bandwidths))
    keep = min(running, slots)
    free_slots = slots - keep
    start = min(free_slots, max(0, candidates))
    if budget.bandwidth is None:
        return Allocation(keep, start, None, None, free_slots)
    available = max(0, budget.bandwidth - sum(b for b in foreign_bandwidths if b is not None))
    keep = min(keep, available)  # each pull needs at least 1 byte/s
    start = min(start, available - keep)
    pulls = keep + start
    share = available // pulls if pulls else available
    return Allocation(keep, start, share, available, free_slots)
