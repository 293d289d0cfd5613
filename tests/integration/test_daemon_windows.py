"""Windows on a real host: the daemon's clock is the system clock shifted (OffsetClock), so a
test stands seconds before a boundary instead of waiting for 10:00 UTC. Monotonic time and the
controller's queue wait stay real; the controller notices a jump at its next resync (1 s here)
and then wakes at the boundary by its own timer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import libvirt
import pytest
from harness.ground_truth import JobSampler, live_chain
from harness.in_process_daemon import running_in_process
from harness.libvirt_lab import Lab
from harness.policy_files import policy, rule
from harness.qemu_images import MIB
from harness.waiting import wait_until

from exporter.core.clock import OffsetClock
from exporter.core.decisions import AbortReason, DiskState

WINDOW = {"ten": {"days": "daily", "from": "10:00", "to": "10:01"}}
OPENS = datetime(2026, 3, 10, 10, 0, tzinfo=UTC)  # a Tuesday; the window is daily anyway
CLOSES = OPENS + timedelta(minutes=1)


def _window_policy(name: str) -> str:
    return policy(rule("mine", [name], windows=["ten"]), bandwidth="2MiB/s", windows=WINDOW)


def test_a_pull_waits_for_its_window_and_starts_when_it_opens(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    image_folder: Path,
    record_property: pytest.RecordProperty,
) -> None:
    [key] = domains.start_with_chains("opens", [8])
    clock = OffsetClock.reading(OPENS - timedelta(seconds=3))
    opens_at = time.monotonic() + OPENS.timestamp() - clock.time()  # the opening in real time
    text = _window_policy(key.domain)
    with (
        running_in_process(text, image_folder, clock, only=[key.domain]) as daemon,
        JobSampler([key]) as sampler,
    ):
        wait_until(lambda: daemon.state(key) is not None, 5, "the first plan")
        waiting = daemon.state(key)
        daemon.wait_completed([key], timeout=30)
        starts = daemon.host.calls_of("start_pull", key)
        first_seen = sampler.running(key)[0].at
        observes = [(round(t - opens_at, 3), round(d, 3)) for t, d in daemon.host.observes]
    delay = starts[0].epoch - OPENS.timestamp()
    record_property("start_after_opening_s", round(delay, 3))
    record_property("start_pull_took_s", round(starts[0].took, 3))
    why = f"observes (s after opening, s taken): {observes}; start_pull took {starts[0].took:.2f}"
    assert waiting is DiskState.WAITING_WINDOW
    assert len(starts) == 1
    assert 0 <= delay < 3.0, f"started {delay:.2f} s after the window opened; {why}"
    assert first_seen >= opens_at - 0.05, f"a job ran {opens_at - first_seen:.2f} s too early"
    assert live_chain(libvirt_conn, key) == ()


def test_a_pull_aborted_when_its_window_closes_resumes_in_the_next_and_completes_once(
    libvirt_conn: libvirt.virConnect,
    domains: Lab,
    image_folder: Path,
    record_property: pytest.RecordProperty,
) -> None:
    # 32 MiB at 2 MiB/s need ~16 s; the window closes 5 s after the start.
    [key] = domains.start_with_chains("closes", [32])
    clock = OffsetClock.reading(CLOSES - timedelta(seconds=5))
    text = _window_policy(key.domain)
    with (
        running_in_process(text, image_folder, clock, only=[key.domain]) as daemon,
        JobSampler([key]) as sampler,
    ):
        wait_until(
            lambda: daemon.aborted(key, AbortReason.WINDOW_CLOSED) == 1,
            15,
            lambda: f"the abort at the window's end: {daemon.snapshot.counters}",
        )
        wait_until(lambda: sampler.of(key)[-1].job is None, 5, "the aborted job gone")
        first_run = sampler.running(key)
        aborts = daemon.host.calls_of("abort", key)
        between = daemon.state(key)
        clock.set(OPENS + timedelta(days=1, seconds=-3))  # the next day, just before opening
        wait_until(
            lambda: len(daemon.host.calls_of("start_pull", key)) == 2,
            10,
            lambda: f"the second start: {daemon.host.calls}",
        )
        daemon.wait_completed([key], timeout=30)
        starts = daemon.host.calls_of("start_pull", key)
        second_run = [s for s in sampler.running(key) if s.at > starts[1].returned - 0.5]
        counters = daemon.snapshot.counters
    copied = first_run[-1].job.cur if first_run[-1].job else 0
    resumed_at = second_run[0].job.cur if second_run[0].job else 0
    record_property("copied_in_first_window_mib", round(copied / MIB, 2))
    record_property("first_cursor_in_second_window_mib", round(resumed_at / MIB, 2))
    record_property("abort_after_closing_s", round(aborts[0].epoch - CLOSES.timestamp(), 3))
    assert 0 <= aborts[0].epoch - CLOSES.timestamp() < 1.5
    assert between is DiskState.WAITING_WINDOW
    assert starts[1].epoch >= (OPENS + timedelta(days=1)).timestamp()
    assert 4 * MIB <= copied <= 28 * MIB, f"{copied / MIB:.1f} MiB copied before the close"
    # QEMU skips clusters already in the overlay: the cursor jumps past what was copied.
    assert resumed_at >= 0.9 * copied, f"second run seen at {resumed_at / MIB:.1f} MiB"
    assert counters.started == {key: 2}
    assert counters.completed == {key: 1}
    assert counters.aborted == {(key, AbortReason.WINDOW_CLOSED): 1}
    assert counters.failed == {}
    assert live_chain(libvirt_conn, key) == ()
