"""One copy per ``message_id`` in flight: aiormq matches a returned copy by it."""

from __future__ import annotations

import asyncio

__all__ = ["MessageIdClaims"]


class MessageIdClaims:
    """Serialises the publishes of copies that share a ``message_id``.

    ``await claims.claim(id)`` waits until no other copy of ``id`` is in flight;
    pair it with ``claims.release(id)``. The event a waiter needs is made by the
    first waiter, so an uncontended claim (the usual case) costs a dict entry and
    nothing else. A copy without a ``message_id`` gets a random one from aiormq:
    nothing to claim.
    """

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Event | None] = {}

    async def claim(self, message_id: str | None) -> None:
        if not message_id:
            return
        in_flight = self._in_flight
        while message_id in in_flight:
            busy = in_flight[message_id]
            if busy is None:
                busy = in_flight[message_id] = asyncio.Event()
            await busy.wait()
        in_flight[message_id] = None

    def release(self, message_id: str | None) -> None:
        if not message_id:
            return
        busy = self._in_flight.pop(message_id)
        if busy is not None:
            busy.set()
