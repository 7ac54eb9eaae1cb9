"""The per-delay topology: one queue per delay, declared when its lease is due.

nameko-amqp-retry 0.7.1's: a headers exchange and ``backoff--{N}ms`` queues that
expire ``grace_ms`` after their last declare (:class:`~aio_backoff.LeaseBook`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiormq.abc
from pamqp.commands import Basic

from ..core._plan import RetryPlan
from ..core._topology import DelayQueue, LeaseBook

__all__ = ["DelayQueueLeases", "PerDelay"]

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


def _queue(plan: RetryPlan) -> DelayQueue:
    queue = plan.delay_queue
    if queue is None:  # pragma: no cover - plan_retry gives every per-delay plan one
        msg = f"a {plan.topology!r} plan has no delay queue"
        raise ValueError(msg)
    return queue


class PerDelay:
    """The :class:`~aio_backoff.aiopika._placement.Placement` of ``"per-delay"``."""

    mandatory = True

    def __init__(self, book: LeaseBook | None = None) -> None:
        self.leases = DelayQueueLeases(book)

    def describe(self, plan: RetryPlan) -> str:
        queue = _queue(plan)
        return f"via exchange {queue.delay_exchange!r} and delay queue {queue.name!r}"

    async def declare(
        self, channel: aiormq.abc.AbstractChannel, targets: Iterable[str] = ()
    ) -> None:
        """Nothing: each delay queue is declared with its first copy, and the
        delay exchange routes to the target queue by its name."""

    async def prepare(
        self, channel: aiormq.abc.AbstractChannel, plan: RetryPlan, *, force: bool
    ) -> None:
        queue = _queue(plan)
        if force or self.leases.due(queue):
            await self.leases.renew(channel, queue, force=force)

    def address(self, plan: RetryPlan) -> tuple[str, str]:
        return _queue(plan).delay_exchange, plan.routing_key

    def properties(
        self, properties: Basic.Properties, plan: RetryPlan
    ) -> Basic.Properties:
        properties.expiration = plan.expiration_ms
        return properties

    def held(self, plan: RetryPlan) -> bool:
        """Whether the copy reached its queue within ``grace_ms`` of our last
        declare (the confirm came by then): otherwise the queue may have expired
        with the copy in it."""
        return self.leases.book.covers(_queue(plan))

    def forget(self, plan: RetryPlan) -> None:
        self.leases.forget(_queue(plan))
