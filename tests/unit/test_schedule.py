"""Window evaluation, boundaries and budgets, including midnight and both DST transitions."""

from __future__ import annotations

import time as time_module
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from example_counts import scaled
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.schedule import budget_at, next_boundary, open_windows, rule_open
from exporter.policy.loader import parse_policy
from exporter.policy.values import Budget, Policy

BERLIN = ZoneInfo("Europe/Berlin")
MIB = 1024**2
# 2026: spring-forward Sun 29 March 02:00 CET -> 03:00 CEST (01:00 UTC);
# fall-back Sun 25 October 03:00 CEST -> 02:00 CET (01:00 UTC).


def policy(windows: str, timezone: str | None = "Europe/Berlin", extra: str = "") -> Policy:
    zone = f"timezone: {timezone}\n" if timezone else ""
    return parse_policy(f"version: 1\n{zone}windows:\n{windows}{extra}", "test.yaml")


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


FRIDAY_NIGHT = policy('  night: {days: [fri], from: "22:00", to: "06:00"}\n')
WEEKEND = policy("  weekend: {days: [sat, sun]}\n")


# -- across midnight -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "is_open"),
    [
        (berlin(2026, 6, 5, 21, 59), False),  # fri before
        (berlin(2026, 6, 5, 22, 0), True),  # fri opens
        (berlin(2026, 6, 5, 23, 59), True),
        (berlin(2026, 6, 6, 0, 0), True),  # sat, carried over from fri
        (berlin(2026, 6, 6, 5, 59), True),
        (berlin(2026, 6, 6, 6, 0), False),  # sat closes
        (berlin(2026, 6, 6, 22, 30), False),  # sat is not a listed day
        (berlin(2026, 6, 5, 2, 0), False),  # fri early morning belongs to thu's night
    ],
)
def test_window_crossing_midnight_opens_on_its_day_and_closes_the_next(
    at: datetime, is_open: bool
) -> None:
    assert ("night" in open_windows(FRIDAY_NIGHT, at)) is is_open


def test_window_crossing_midnight_from_sunday_closes_on_monday() -> None:
    sunday = policy('  late: {days: [sun], from: "23:00", to: "01:00"}\n')
    assert open_windows(sunday, berlin(2026, 6, 8, 0, 30)) == {"late"}  # monday
    assert open_windows(sunday, berlin(2026, 6, 8, 1, 0)) == frozenset()


def test_evaluation_uses_the_policy_zone_not_the_zone_of_the_argument() -> None:
    # 21:30 UTC on a Friday in June is 23:30 in Berlin.
    assert open_windows(FRIDAY_NIGHT, utc(2026, 6, 5, 21, 30)) == {"night"}
    assert open_windows(FRIDAY_NIGHT, utc(2026, 6, 5, 19, 30)) == frozenset()


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        open_windows(FRIDAY_NIGHT, datetime(2026, 6, 5, 23, 0))


# -- day lists and same-day ranges ---------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "is_open"),
    [
        (berlin(2026, 6, 5, 23, 59, 59), False),  # fri
        (berlin(2026, 6, 6, 0, 0), True),  # sat
        (berlin(2026, 6, 7, 23, 59, 59), True),  # sun
        (berlin(2026, 6, 8, 0, 0), False),  # mon
    ],
)
def test_whole_day_window_covers_listed_days_only(at: datetime, is_open: bool) -> None:
    assert ("weekend" in open_windows(WEEKEND, at)) is is_open


def test_same_day_range_is_half_open() -> None:
    lunch = policy('  lunch: {days: weekdays, from: "12:00", to: "13:30"}\n')
    assert open_windows(lunch, berlin(2026, 6, 3, 11, 59)) == frozenset()
    assert open_windows(lunch, berlin(2026, 6, 3, 12, 0)) == {"lunch"}
    assert open_windows(lunch, berlin(2026, 6, 3, 13, 29)) == {"lunch"}
    assert open_windows(lunch, berlin(2026, 6, 3, 13, 30)) == frozenset()
    assert open_windows(lunch, berlin(2026, 6, 6, 12, 30)) == frozenset()  # saturday


def test_several_windows_can_be_open_at_once() -> None:
    both = policy('  a: {days: daily}\n  b: {days: [wed], from: "10:00", to: "11:00"}\n')
    assert open_windows(both, berlin(2026, 6, 3, 10, 30)) == {"a", "b"}


# -- spring forward: 02:00-02:59 does not exist ---------------------------------------------


def test_window_starting_in_the_skipped_hour_opens_at_the_transition() -> None:
    early = policy('  early: {days: [sun], from: "02:30", to: "05:00"}\n')
    assert open_windows(early, utc(2026, 3, 29, 0, 59, 59)) == frozenset()  # 01:59:59 CET
    assert open_windows(early, utc(2026, 3, 29, 1, 0)) == {"early"}  # 03:00 CEST
    assert next_boundary(early, utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)


def test_window_ending_in_the_skipped_hour_closes_at_the_transition() -> None:
    short = policy('  short: {days: [sat], from: "22:00", to: "02:30"}\n')
    assert open_windows(short, utc(2026, 3, 29, 0, 59, 59)) == {"short"}
    assert open_windows(short, utc(2026, 3, 29, 1, 0)) == frozenset()
    assert next_boundary(short, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 0)


def test_night_window_over_spring_forward_keeps_its_wall_clock_times() -> None:
    night = policy('  night: {days: [sat], from: "22:00", to: "06:00"}\n')
    opens = next_boundary(night, utc(2026, 3, 28, 12, 0))
    assert opens == berlin(2026, 3, 28, 22, 0)
    assert opens is not None
    closes = next_boundary(night, opens)
    assert closes == berlin(2026, 3, 29, 6, 0)  # 04:00 UTC: seven hours, not eight
    assert closes is not None
    assert closes - opens == timedelta(hours=7)


# -- fall back: 02:00-02:59 happens twice --------------------------------------------------


def test_window_ending_in_the_repeated_hour_closes_at_the_first_pass_and_stays_closed() -> None:
    short = policy('  short: {days: [sat], from: "22:00", to: "02:30"}\n')
    first_pass = utc(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert berlin(2026, 10, 25, 2, 30, fold=0).astimezone(UTC) == first_pass
    assert open_windows(short, first_pass - timedelta(seconds=1)) == {"short"}
    assert open_windows(short, first_pass) == frozenset()
    assert open_windows(short, berlin(2026, 10, 25, 2, 15, fold=1)) == frozenset()  # CET
    assert next_boundary(short, first_pass) == berlin(2026, 10, 31, 22, 0)  # next saturday


def test_window_starting_in_the_repeated_hour_opens_at_the_first_pass_and_stays_open() -> None:
    early = policy('  early: {days: [sun], from: "02:30", to: "05:00"}\n')
    assert open_windows(early, utc(2026, 10, 25, 0, 29)) == frozenset()
    assert open_windows(early, utc(2026, 10, 25, 0, 30)) == {"early"}
    assert open_windows(early, berlin(2026, 10, 25, 2, 0, fold=1)) == {"early"}  # repeated
    assert next_boundary(early, utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 4, 0)


def test_night_window_over_fall_back_is_an_hour_longer() -> None:
    night = policy('  night: {days: [sat], from: "22:00", to: "06:00"}\n')
    opens = berlin(2026, 10, 24, 22, 0)
    closes = next_boundary(night, opens)
    assert closes == berlin(2026, 10, 25, 6, 0)
    assert closes is not None
    # Subtract in UTC: Python subtracts same-zone datetimes as wall times.
    assert closes - opens.astimezone(UTC) == timedelta(hours=9)


# -- host local zone -----------------------------------------------------------------------


@pytest.fixture
def host_in_berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time_module.tzset()
    yield
    monkeypatch.undo()
    time_module.tzset()


@pytest.mark.usefixtures("host_in_berlin")
def test_policy_without_timezone_uses_the_host_local_zone() -> None:
    local = policy('  night: {days: [fri], from: "22:00", to: "06:00"}\n', timezone=None)
    assert open_windows(local, utc(2026, 6, 5, 20, 30)) == {"night"}  # 22:30 CEST
    assert next_boundary(local, utc(2026, 6, 5, 12, 0)) == utc(2026, 6, 5, 20, 0)


@pytest.mark.usefixtures("host_in_berlin")
def test_host_local_zone_handles_the_skipped_hour_like_a_named_zone() -> None:
    local = policy('  early: {days: [sun], from: "02:30", to: "05:00"}\n', timezone=None)
    assert next_boundary(local, utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)


# -- next boundary -------------------------------------------------------------------------


def test_next_boundary_is_strictly_after_the_given_instant() -> None:
    assert next_boundary(FRIDAY_NIGHT, berlin(2026, 6, 5, 22, 0)) == berlin(2026, 6, 6, 6, 0)
    assert next_boundary(FRIDAY_NIGHT, berlin(2026, 6, 5, 21, 59)) == berlin(2026, 6, 5, 22, 0)


def test_next_boundary_skips_midnight_between_back_to_back_whole_days() -> None:
    assert next_boundary(WEEKEND, berlin(2026, 6, 5, 12, 0)) == berlin(2026, 6, 6, 0, 0)
    assert next_boundary(WEEKEND, berlin(2026, 6, 6, 12, 0)) == berlin(2026, 6, 8, 0, 0)


def test_next_boundary_finds_next_week() -> None:
    assert next_boundary(FRIDAY_NIGHT, berlin(2026, 6, 6, 6, 0)) == berlin(2026, 6, 12, 22, 0)


def test_next_boundary_is_none_without_windows() -> None:
    no_windows = parse_policy("version: 1\n", "p")
    assert next_boundary(no_windows, utc(2026, 6, 5, 0, 0)) is None


def test_next_boundary_is_none_for_an_always_open_window() -> None:
    always = policy("  always: {days: daily, max_concurrent: 3}\n")
    assert next_boundary(always, utc(2026, 6, 5, 0, 0)) is None


EXAMPLE_LIKE = policy(
    '  nights: {days: weekdays, from: "22:00", to: "06:00"}\n'
    "  weekend: {days: [sat, sun]}\n"
    '  lunch: {days: [mon, wed], from: "12:00", to: "13:30"}\n'
    '  dst: {days: [sun], from: "02:30", to: "03:30"}\n'
)


@settings(max_examples=scaled(200), deadline=None)
@given(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)),
    st.integers(min_value=0, max_value=9),
)
def test_open_windows_change_exactly_at_the_next_boundary(after: datetime, probe: int) -> None:
    start = after.replace(tzinfo=UTC)
    boundary = next_boundary(EXAMPLE_LIKE, start)
    assert boundary is not None
    assert boundary > start
    assert open_windows(EXAMPLE_LIKE, boundary) != open_windows(
        EXAMPLE_LIKE, boundary - timedelta(microseconds=1)
    )
    between = start + (boundary - start) * probe / 10
    assert open_windows(EXAMPLE_LIKE, between) == open_windows(EXAMPLE_LIKE, start)


# -- with freezegun: the caller reads the clock, the schedule does not ----------------------


def test_frozen_clock_friday_late_evening_is_in_the_night_window() -> None:
    with freeze_time("2026-06-05 21:30:00"):  # UTC; 23:30 in Berlin
        assert open_windows(FRIDAY_NIGHT, datetime.now(UTC)) == {"night"}


def test_frozen_clock_moving_past_the_boundary_closes_the_window() -> None:
    with freeze_time("2026-06-06 03:59:00") as frozen:  # 05:59 CEST saturday
        assert open_windows(FRIDAY_NIGHT, datetime.now(UTC)) == {"night"}
        boundary = next_boundary(FRIDAY_NIGHT, datetime.now(UTC))
        assert boundary is not None
        frozen.move_to(boundary)
        assert open_windows(FRIDAY_NIGHT, datetime.now(UTC)) == frozenset()


def test_frozen_clock_across_spring_forward() -> None:
    early = policy('  early: {days: [sun], from: "02:30", to: "05:00"}\n')
    with freeze_time("2026-03-29 00:59:59") as frozen:
        assert open_windows(early, datetime.now(UTC)) == frozenset()
        frozen.tick(timedelta(seconds=1))
        assert open_windows(early, datetime.now(UTC)) == {"early"}


# -- budgets and rules ---------------------------------------------------------------------

BUDGETS = policy(
    "  slow: {bandwidth: 10MiB/s}\n"
    "  fast: {bandwidth: 400MiB/s, max_concurrent: 4}\n"
    "  free: {bandwidth: unlimited}\n"
    "  wide: {max_concurrent: 8}\n",
    extra="defaults: {bandwidth: 50MiB/s, max_concurrent: 2}\n",
)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (set(), Budget(50 * MIB, 2)),
        ({"slow"}, Budget(10 * MIB, 2)),
        ({"fast"}, Budget(400 * MIB, 4)),
        ({"slow", "fast"}, Budget(400 * MIB, 4)),
        ({"fast", "free"}, Budget(None, 4)),
        ({"wide"}, Budget(50 * MIB, 8)),
        ({"slow", "wide"}, Budget(50 * MIB, 8)),
    ],
)
def test_budget_takes_the_most_generous_open_window_falling_back_to_defaults(
    names: set[str], expected: Budget
) -> None:
    assert budget_at(BUDGETS, frozenset(names)) == expected


RULES = policy(
    "  a: {days: [mon]}\n  b: {days: [tue]}\n",
    extra="rules:\n  - {name: anytime}\n  - {name: windowed, windows: [a, b]}\n",
)


def test_rule_without_windows_is_always_open() -> None:
    assert rule_open(RULES.rules[0], frozenset())


@pytest.mark.parametrize(
    ("names", "expected"), [(set(), False), ({"b"}, True), ({"a", "b"}, True), ({"c"}, False)]
)
def test_rule_with_windows_is_open_when_any_of_them_is(names: set[str], expected: bool) -> None:
    assert rule_open(RULES.rules[1], frozenset(names)) is expected
