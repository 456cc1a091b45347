"""Waiting in tests: one home for polling a condition and for settling file descriptors.

Every helper fails the test with a message naming what it waited for (it never hangs until the
pytest timeout, and never returns a bare False to be forgotten).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import pytest

INTERVAL_S = 0.03


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 5.0,
    what: str = "condition",
    *,
    streak: int = 1,
) -> float:
    """Seconds until ``condition()`` holds ``streak`` times in a row; fails after ``timeout_s``."""
    started = time.monotonic()
    seen = 0
    while seen < streak:
        seen = seen + 1 if condition() else 0
        if seen < streak:
            if time.monotonic() - started > timeout_s:
                pytest.fail(f"{what}: not met within {timeout_s} s")
            time.sleep(INTERVAL_S)
    return time.monotonic() - started


async def await_until(
    condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition"
) -> float:
    """:func:`wait_until` for code running on the test's event loop."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not met within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


class HoldsFds(Protocol):
    def open_fds(self) -> int: ...


def settled_fds(process: HoldsFds, baseline: int, tolerance: int, timeout_s: float = 3.0) -> int:
    """The process's open descriptors once back within ``tolerance`` of ``baseline`` (or what
    they are at ``timeout_s``, for the caller to assert on)."""
    deadline = time.monotonic() + timeout_s
    count = process.open_fds()
    while abs(count - baseline) > tolerance and time.monotonic() < deadline:
        time.sleep(0.05)
        count = process.open_fds()
    return count


def assert_fds_settle(
    process: HoldsFds, baseline: int, tolerance: int, timeout_s: float = 3.0
) -> None:
    count = settled_fds(process, baseline, tolerance, timeout_s)
    assert abs(count - baseline) <= tolerance, f"holds {count} fds, {baseline} before"
