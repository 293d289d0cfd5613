"""When windows are open, when that next changes, and the budget in force. Pure: no clock reads.

Windows are wall-clock times in the policy's time zone (`None` = the host's local zone, as
`datetime.astimezone()` sees it). Each listed day yields one *occurrence*: an interval
[opens, closes) of absolute instants. A whole-day window runs from 00:00 of the day to 00:00 of
the next; a range whose end is not after its start closes on the following day (22:00-06:00 on
fri opens fri 22:00 and closes sat 06:00).

Daylight saving time (decided here, tested in tests/unit/test_schedule.py):

- A wall time that does not exist (the skipped hour of spring-forward, e.g. 02:30 in
  Europe/Berlin on the last Sunday of March) takes effect at the transition itself (03:00
  CEST), the first instant at which the wall clock has passed it. A window 02:30-05:00 opens at
  03:00 CEST; a window 22:00-02:30 closes at 03:00 CEST. Neither shifts by an hour.
- A wall time that occurs twice (the repeated hour of fall-back, e.g. 02:30 on the last Sunday
  of October) takes effect at its first occurrence (CEST, PEP 495 fold=0), and only once: a
  window 22:00-02:30 closes at 02:30 CEST and does not reopen when the clock shows 02:00 again;
  a window 02:30-05:00 opens at 02:30 CEST and stays open through the repeated hour.

So a window that contains the transition is an hour shorter or longer in absolute time, like
any wall-clock schedule, but it never flaps.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from exporter.policy.values import Budget, Policy, Rule, Window

_TINY = timedelta(microseconds=1)


def open_windows(policy: Policy, at: datetime) -> frozenset[str]:
    """Names of the policy's windows open at the aware instant `at`."""
    zone = _zone(policy)
    today = _wall(at, zone).date()
    # An occurrence starts at most a day before it is open (plus DST slack).
    days = [today + timedelta(days=offset) for offset in (-2, -1, 0, 1)]
    return frozenset(
        window.name
        for window in policy.windows
        if any(opens <= at < closes for opens, closes in _occurrences(window, days, zone))
    )


def next_boundary(policy: Policy, after: datetime) -> datetime | None:
    """The first instant strictly after `after` at which some window opens or closes (UTC).

    None when the policy has no windows, or none that ever changes (e.g. only "daily" windows
    without times, which are always open). Back-to-back occurrences of one window (a whole-day
    window on mon and tue) are not a boundary at midnight, since nothing changes there.
    """
    if not policy.windows:
        return None
    zone = _zone(policy)
    today = _wall(after, zone).date()
    days = [today + timedelta(days=offset) for offset in range(-2, 10)]
    candidates = sorted(
        {
            instant
            for window in policy.windows
            for occurrence in _occurrences(window, days, zone)
            for instant in occurrence
            if instant > after
        }
    )
    for instant in candidates:
        if open_windows(policy, instant) != open_windows(policy, instant - _TINY):
            return instant
    return None


def budget_at(policy: Policy, open_windows: frozenset[str]) -> Budget:
    """The host budget while exactly `open_windows` are open.

    No window open: the defaults. Otherwise, per field, the most generous value among the
    open windows, where a field a window does not set counts as the defaults' value and
    unlimited bandwidth beats any number.
    """
    defaults = policy.defaults.budget
    if not open_windows:
        return defaults
    windows = [policy.window(name) for name in sorted(open_windows)]
    bandwidths = [w.bandwidth if w.overrides_bandwidth else defaults.bandwidth for w in windows]
    bandwidth = None if None in bandwidths else max(b for b in bandwidths if b is not None)
    max_concurrent = max(
        w.max_concurrent if w.max_concurrent is not None else defaults.max_concurrent
        for w in windows
    )
    return Budget(bandwidth=bandwidth, max_concurrent=max_concurrent)


def rule_open(rule: Rule, open_windows: frozenset[str]) -> bool:
    """Whether `rule` may pull now; a rule without windows may pull any time."""
    return not rule.windows or any(name in open_windows for name in rule.windows)


# -- wall clock <-> instants ---------------------------------------------------------------


def _zone(policy: Policy) -> tzinfo | None:
    return zoneinfo.ZoneInfo(policy.timezone) if policy.timezone else None


def _wall(at: datetime, zone: tzinfo | None) -> datetime:
    """Naive wall-clock time of `at` in `zone` (None = host local)."""
    if at.tzinfo is None:
        raise ValueError("schedule functions need an aware datetime")
    return at.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: tzinfo | None, fold: int) -> datetime:
    if zone is None:
        return wall.replace(fold=fold).astimezone(UTC)  # naive: the host's local rules
    return wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def _resolve(day: date, clock: time, zone: tzinfo | None) -> datetime:
    """The instant (UTC) at which the wall clock in `zone` reaches `clock` on `day`.

    Repeated wall times resolve to their first occurrence; skipped ones to the transition.
    """
    wall = datetime.combine(day, clock)
    first = _instant(wall, zone, fold=0)
    if _wall(first, zone) == wall:
        return first
    # In a gap: fold=1 and fold=0 bracket the transition; find the first instant whose wall
    # time is at or after `wall`, to the second (transitions are on whole seconds).
    low, high = sorted((_instant(wall, zone, fold=1), first))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if _wall(middle, zone) >= wall:
            high = middle
        else:
            low = middle
    return high if _wall(low, zone) < wall else low


def _occurrences(
    window: Window, days: list[date], zone: tzinfo | None
) -> Iterator[tuple[datetime, datetime]]:
    for day in days:
        if day.weekday() not in window.days:
            continue
        if window.start is None or window.end is None:
            yield _resolve(day, time(0), zone), _resolve(day + timedelta(days=1), time(0), zone)
            continue
        end_day = day if window.end > window.start else day + timedelta(days=1)
        yield _resolve(day, window.start, zone), _resolve(end_day, window.end, zone)
