"""Waiting for a condition instead of sleeping, for the asyncio test process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["wait_until"]


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
