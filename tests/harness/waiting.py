"""Polling with a deadline: every wait in the harness is bounded."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """True as soon as `predicate()` holds; False if it still does not after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: Callable[[], str] | str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll until `predicate()`; fail naming `what` (a callable is evaluated on failure only)."""
    if wait_for(predicate, timeout, interval):
        return
    detail = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout} s waiting for {detail}")


def next_item(items: queue.SimpleQueue[T], match: Callable[[T], bool], timeout: float) -> T | None:
    """The first item satisfying `match` within `timeout` seconds; others are dropped."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            item = items.get(timeout=left)
        except queue.Empty:
            return None
        if match(item):
            return item
