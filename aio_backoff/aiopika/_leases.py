"""Declaring delay queues when their lease is due (:class:`~aio_backoff.LeaseBook`)."""

from __future__ import annotations

import asyncio
import logging

import aiormq.abc

from ..core._topology import DelayQueue, LeaseBook

__all__ = ["DelayQueueLeases"]

log = logging.getLogger("aio_backoff").getChild("republish")


class DelayQueueLeases:
    """Declares each delay queue once per due lease, for all the publishes waiting.

    Without the per-queue lock, every publish in flight when a lease falls due (up to
    the consumers' prefetch) would declare the exchange, queue and binding itself: a
    burst of synchronous round trips that also hold the channel's lock.
    """

    def __init__(self, book: LeaseBook | None = None) -> None:
        self.book = LeaseBook() if book is None else book
        self._renewing: dict[tuple[str, str], asyncio.Lock] = {}

    def due(self, queue: DelayQueue) -> bool:
        return self.book.needs_declare(queue)

    def forget(self, queue: DelayQueue) -> None:
        self.book.forget(queue)

    async def renew(
        self, channel: aiormq.abc.AbstractChannel, queue: DelayQueue, *, force: bool
    ) -> None:
        """Declare ``queue`` unless another publish just did; ``force``: even then."""
        key = (queue.delay_exchange, queue.name)
        lock = self._renewing.setdefault(key, asyncio.Lock())
        async with lock:
            if force or self.book.needs_declare(queue):
                await self._declare(channel, queue)

    async def _declare(
        self, channel: aiormq.abc.AbstractChannel, queue: DelayQueue
    ) -> None:
        started = self.book.now()
        await channel.exchange_declare(
            queue.delay_exchange, exchange_type="headers", durable=True
        )
        await channel.queue_declare(queue.name, durable=True, arguments=queue.arguments)
        await channel.queue_bind(
            queue.name,
            queue.delay_exchange,
            routing_key="",
            arguments=queue.binding_arguments,
        )
        self.book.declared(queue, at=started)
        log.debug(
            "declared delay queue %r on exchange %r (x-expires %r ms)",
            queue.name,
            queue.delay_exchange,
            queue.arguments["x-expires"],
        )
