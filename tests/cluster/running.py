"""What the node-loss scenarios share while they run: waiting for a condition, and
counting the library's decisions from its log lines. No aio-pika import."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

__all__ = [
    "GATE_CLOSED",
    "GAVE_UP",
    "PERMANENT",
    "REQUEUED",
    "Outcomes",
    "sleep_until",
    "wait_for",
]

PERMANENT = "parked at once: copy not placed, permanent"
REQUEUED = "requeued after a pause: copy not placed, transient"
GAVE_UP = "parked at the transient try limit"
GATE_CLOSED = "publisher unavailable: the gate closed"


class Outcomes(logging.Handler):
    """Counts the library's decisions from its log lines (one per decision)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "copy not placed, permanent" in text:
            self.counts[PERMANENT] += 1
        elif "copy not placed, transient" in text:
            parked = "dead-lettered or parked" in text
            self.counts[GAVE_UP if parked else REQUEUED] += 1
        elif text.startswith("publisher unavailable"):
            self.counts[GATE_CLOSED] += 1


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    seconds: float,
    what: str,
    *,
    poll: float = 0.2,
) -> None:
    """Wait until ``condition()`` holds, or fail saying ``what``."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            msg = f"{what}: not within {seconds} s"
            raise AssertionError(msg)
        await asyncio.sleep(poll)


async def sleep_until(when: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``when`` (at once if it has)."""
    await asyncio.sleep(max(0.0, when - time.monotonic()))
