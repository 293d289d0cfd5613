"""What two reads of a block job's cursor say."""

from __future__ import annotations

from exporter.core.job_rate import CursorSample, bytes_advanced, rate_between


def test_a_first_read_counts_nothing():
    assert bytes_advanced(None, 5_000) == 0


def test_an_advancing_cursor_counts_the_difference():
    assert bytes_advanced(1_000, 5_000) == 4_000


def test_a_cursor_that_went_back_is_a_new_job_counted_from_zero():
    assert bytes_advanced(9_000, 2_000) == 2_000


def test_a_rate_is_bytes_over_seconds_between_two_reads():
    assert rate_between(CursorSample(1_000, 10.0), CursorSample(3_000, 12.0)) == 1_000.0


def test_no_rate_when_the_cursor_went_back_or_no_time_passed():
    assert rate_between(CursorSample(3_000, 10.0), CursorSample(1_000, 12.0)) is None
    assert rate_between(CursorSample(1_000, 10.0), CursorSample(3_000, 10.0)) is None
