"""Bandwidths and durations as operators write them, and back again for humans.

Bandwidths are bytes per second with an explicit unit: SI (`kB`, `KB`, `MB`, `GB`, `TB`, powers
of 1000) or IEC (`KiB`, `MiB`, `GiB`, `TiB`, powers of 1024), always followed by `/s`. A bare
number is refused on purpose: libvirt's own default unit is MiB/s, so `50` is ambiguous.
Durations are one or more `<number><unit>` parts with units `d`, `h`, `m`, `s` (`90s`, `1h30m`).
"""

from __future__ import annotations

import math
import re

UNLIMITED = "unlimited"

_RATE_UNITS: dict[str, int] = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_RATE_RE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)\s?(?P<unit>[A-Za-z]+)/s$")
_RATE_FORMS = (
    'a bandwidth is a number with a unit per second, like "200MiB/s", "1.5GiB/s", "500KB/s" '
    "(units B, KB/kB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024), "
    'or "unlimited"'
)

_SIZE_RE = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]+)?)\s?(?P<unit>[A-Za-z]+)$")
_SIZE_FORMS = (
    'a size is a number with a unit, like "20GiB", "500MB" or "1.5TiB" (units B, KB/kB, MB, GB, '
    "TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024)"
)

_DURATION_UNITS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([dhms])")
_DURATION_FORMS = (
    'a duration is one or more number-unit parts with units d, h, m, s, like "90s", "5m", '
    '"1h30m" or "2d"'
)


def parse_size_rate(text: str) -> int | None:
    """Bytes per second for `text` (`None` for "unlimited"); rounds down to whole bytes.

    Zero is returned as 0; whether zero is acceptable is the caller's decision.
    """
    if text.strip() == UNLIMITED:
        return None
    return _bytes(text, _RATE_RE, "a bandwidth", _RATE_FORMS)


def parse_size(text: str) -> int:
    """Bytes for `text` such as `20GiB` or `500MB`; rounds down to whole bytes."""
    return _bytes(text, _SIZE_RE, "a size", _SIZE_FORMS)


def _bytes(text: str, pattern: re.Pattern[str], what: str, forms: str) -> int:
    """A number with one of the byte units, as `pattern` frames it (with `/s` or without)."""
    match = pattern.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not {what}; {forms}")
    unit = match.group("unit")
    if unit not in _RATE_UNITS:
        raise ValueError(f"unknown unit {unit!r} in {text!r}; {forms}")
    return int(float(match.group("number")) * _RATE_UNITS[unit])


def format_size(size: int) -> str:
    """Bytes for humans: exact multiples keep their unit ("20GiB"), others one decimal in the
    largest fitting IEC unit ("9.5MiB")."""
    return format_bytes_rate(size).removesuffix("/s")


def parse_duration(text: str) -> float:
    """Seconds for `text` such as `90s`, `5m`, `1h30m`, `2d`, `1.5h`."""
    stripped = text.strip()
    parts = _DURATION_PART_RE.findall(stripped)
    if not stripped or "".join(number + unit for number, unit in parts) != stripped:
        raise ValueError(f"{text!r} is not a duration; {_DURATION_FORMS}")
    order = [list(_DURATION_UNITS).index(unit) for _, unit in parts]
    if order != sorted(set(order)):
        raise ValueError(f"{text!r} repeats a unit or has them out of order; {_DURATION_FORMS}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def format_bytes_rate(bytes_per_second: int | None) -> str:
    """`None` -> "unlimited"; exact multiples keep their unit ("200MiB/s", "10MB/s"), other
    values are rounded to one decimal in the largest fitting IEC unit ("9.5MiB/s")."""
    if bytes_per_second is None:
        return UNLIMITED
    value = bytes_per_second
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
        size = _RATE_UNITS[unit]
        if value >= size and value % size == 0:
            return f"{value // size}{unit}/s"
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = _RATE_UNITS[unit]
        if value >= size:
            return f"{value / size:.1f}{unit}/s"
    return f"{value}B/s"


def format_duration(seconds: float) -> str:
    """90 -> "1m30s", 5400 -> "1h30m", 0 -> "0s", 1.5 -> "1.5s"; negative values get a "-"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    whole = math.floor(seconds)
    fraction = round(seconds - whole, 3)
    parts: list[str] = []
    for unit, size in _DURATION_UNITS.items():
        count, whole = divmod(whole, size)
        if count and (unit != "s" or not fraction):
            parts.append(f"{count}{unit}")
        elif unit == "s" and fraction:
            parts.append(f"{count + fraction:g}s")
    return "".join(parts) or "0s"


def format_timestamp(epoch: float) -> str:
    """Epoch seconds as UTC ISO 8601 to the second: "2026-11-26T11:00:00Z"."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
