"""Waiting on a condition in a test: poll until it holds, fail saying what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    what: str, check: Callable[[], T], timeout_s: float = 120.0, poll_s: float = 0.2
) -> T:
    """Poll `check` until it returns something truthy, and return that; after `timeout_s`
    raise AssertionError naming `what` and the last value seen (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not true after {timeout_s:.0f} s (last seen: {last!r})")


def wait_for(
    what: str,
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout_s: float = 120.0,
    poll_s: float = 0.5,
) -> T:
    """Poll `probe` until `done(value)`; return that value. After `timeout_s` raise
    AssertionError naming `what` and the last value probed (e.g. a status to show)."""
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout_s:.0f} s (last seen: {value!r})")
        time.sleep(poll_s)
        value = probe()
    return value
