"""Waiting for a condition instead of sleeping, for the asyncio test process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_until", "wait_until_true"]


async def wait_until(
    check: Callable[[], bool], *, seconds: float = 10, what: str = "condition"
) -> None:
    """Poll ``check`` every 20 ms (without blocking the loop) until it holds."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            msg = f"timed out after {seconds} s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


async def wait_until_true(
    check: Callable[[], Awaitable[bool]],
    *,
    seconds: float = 10,
    what: str = "condition",
) -> None:
    """:func:`wait_until` for a check that must ask the broker (a coroutine)."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            msg = f"timed out after {seconds} s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)
