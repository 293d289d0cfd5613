"""Time, injected: the controller never calls `time` or waits on its own.

`SystemClock` is the real thing. Tests pass a `ManualClock`, whose `wait` advances time
instead of sleeping, so a whole day of windows runs in milliseconds.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def time(self) -> float:
        """Epoch seconds."""
        ...

    def monotonic(self) -> float: ...

    def wait(self, inbox: queue.SimpleQueue[T], timeout: float) -> T | None:
        """The next item of `inbox`, or None once `timeout` seconds have passed."""
        ...


def now_of(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.time(), UTC)


def sleep(clock: Clock, seconds: float) -> None:
    """Wait on nothing: the clock's own wait, so a ManualClock just moves on."""
    clock.wait(queue.SimpleQueue[None](), seconds)


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, inbox: queue.SimpleQueue[T], timeout: float) -> T | None:
        try:
            return inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


class OffsetClock(SystemClock):
    """The system clock with its wall time shifted by an adjustable offset; monotonic time and
    waits are real. Lets tests and benchmarks stand just before a window boundary."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    @classmethod
    def reading(cls, when: datetime) -> OffsetClock:
        clock = cls()
        clock.set(when)
        return clock

    def set(self, when: datetime) -> None:
        """From now on the wall clock reads `when` and runs on from there."""
        self.offset = when.timestamp() - time.time()

    def time(self) -> float:
        return time.time() + self.offset


@dataclass
class ManualClock:
    """A clock that only moves when told to, or when something waits on it."""

    epoch: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    mono: float = field(default=0.0)

    def time(self) -> float:
        return self.epoch

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.epoch += seconds
        self.mono += seconds

    def wait(self, inbox: queue.SimpleQueue[T], timeout: float) -> T | None:
        try:
            return inbox.get_nowait()
        except queue.Empty:
            self.advance(max(0.0, timeout))
            return None
