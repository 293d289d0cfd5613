"""Bandwidth and duration parsing and formatting."""

from __future__ import annotations

import pytest

from exporter.policy.units import (
    format_bytes_rate,
    format_duration,
    parse_duration,
    parse_size_rate,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200MiB/s", 200 * 1024**2),
        ("1.5GiB/s", 1536 * 1024**2),
        ("500KB/s", 500_000),
        ("500kB/s", 500_000),
        ("10MB/s", 10_000_000),
        ("1TiB/s", 1024**4),
        ("2GB/s", 2_000_000_000),
        ("512B/s", 512),
        ("4 KiB/s", 4096),
    ],
)
def test_parse_size_rate_reads_si_and_iec_units(text: str, expected: int) -> None:
    assert parse_size_rate(text) == expected


def test_parse_size_rate_reads_unlimited_as_none() -> None:
    assert parse_size_rate("unlimited") is None


@pytest.mark.parametrize("text", ["50", "50MiB", "50mib/s", "MiB/s", "-5MiB/s", "5 XB/s", ""])
def test_parse_size_rate_rejects_malformed_text_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"200MiB/s.*unlimited"):
        parse_size_rate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800), ("1.5h", 5400)],
)
def test_parse_duration_reads_unit_parts(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["90", "5x", "1hh", "h", "", "1h 30m", "1ms", "-5s"])
def test_parse_duration_rejects_malformed_text_naming_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"1h30m"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1m1m", "30m1h"])
def test_parse_duration_rejects_repeated_or_unordered_units(text: str) -> None:
    with pytest.raises(ValueError, match="repeats a unit or has them out of order"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "unlimited"),
        (200 * 1024**2, "200MiB/s"),
        (10_000_000, "10MB/s"),
        (1536 * 1024**2, "1536MiB/s"),
        (int(9.5 * 1024**2) + 1, "9.5MiB/s"),
        (100, "100B/s"),
    ],
)
def test_format_bytes_rate_is_readable(value: int | None, expected: str) -> None:
    assert format_bytes_rate(value) == expected


@pytest.mark.parametrize("value", [None, 1, 1000, 1024, 200 * 1024**2, 10_000_000, 3 * 1024**4])
def test_format_bytes_rate_of_exact_values_parses_back(value: int | None) -> None:
    assert parse_size_rate(format_bytes_rate(value)) == value


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "0s"), (90, "1m30s"), (5400, "1h30m"), (172800, "2d"), (1.5, "1.5s"), (3661, "1h1m1s")],
)
def test_format_duration_is_readable(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3600, 86399, 90061])
def test_format_duration_parses_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
