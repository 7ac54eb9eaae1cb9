"""Taking messages off a service's queues, and giving them back on stop.

:class:`QueueConsumer` owns the channel a service consumes on (its prefetch is the
service's ``max_workers``), declares the queues the way nameko does, runs each
delivery in its own task and knows which are in flight. :meth:`QueueConsumer.stop`
stops taking messages, lets the handlers in flight finish within the shutdown
timeout, cancels the rest (their messages go back to their queues) and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from ..core.nameko_wire import EventQueue
from ._replies import CHANNEL_ERRORS

__all__ = ["OnMessage", "QueueConsumer"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")

OnMessage = Callable[[AbstractIncomingMessage], Awaitable[None]]
OnCancelled = Callable[[AbstractIncomingMessage, str], Awaitable[None]]


class QueueConsumer:
    """Consumes a service's queues on one channel with ``max_workers`` prefetch.

    ``on_cancelled(message, queue)`` settles a message whose handler was cancelled
    (by :meth:`stop`, or because it arrived while stopping).
    """

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        max_workers: int,
        shutdown_timeout: float | None,
        queue_arguments: Mapping[str, Any] | None,
        on_cancelled: OnCancelled,
    ) -> None:
        self.connection = connection
        self.max_workers = max_workers
        self.shutdown_timeout = shutdown_timeout
        self.queue_arguments = dict(queue_arguments) if queue_arguments else None
        self.on_cancelled = on_cancelled
        self.channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._working: set[asyncio.Task[Any]] = set()
        self.stopping = False

    async def open(self) -> AbstractChannel:
        self.stopping = False
        channel = self.channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=self.max_workers)
        return channel

    async def consume_rpc(
        self, *, rpc_exchange: str, queue: str, binding_key: str, on_message: OnMessage
    ) -> None:
        """Declare ``queue`` (durable) bound to the RPC exchange; consume it."""
        assert self.channel is not None  # opened
        rpc = await self.channel.declare_exchange(
            rpc_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await self.channel.declare_queue(
            queue, durable=True, arguments=self.queue_arguments
        )
        await declared.bind(rpc, routing_key=binding_key)
        await self._consume(declared, on_message)

    async def consume_events(self, spec: EventQueue, on_message: OnMessage) -> None:
        """Declare an event handler's queue as nameko does; consume it."""
        assert self.channel is not None  # opened
        source = await self.channel.declare_exchange(
            spec.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        declared = await self.channel.declare_queue(
            spec.name,
            durable=spec.durable,
            auto_delete=spec.auto_delete,
            exclusive=spec.exclusive,
            arguments=self.queue_arguments,
        )
        await declared.bind(source, routing_key=spec.routing_key)
        await self._consume(declared, on_message)

    async def _consume(self, queue: AbstractQueue, on_message: OnMessage) -> None:
        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._deliver(queue.name, on_message, message)

        tag = await queue.consume(deliver)
        self._consumers.append((queue, tag))

    async def _deliver(
        self, queue: str, on_message: OnMessage, message: AbstractIncomingMessage
    ) -> None:
        """Run ``on_message(message)`` as a tracked task; one that arrives while
        stopping, or is cancelled, goes back to its queue."""
        task = asyncio.current_task()
        assert task is not None  # aiormq runs each delivery in a task
        self._working.add(task)
        try:
            if self.stopping:
                await self.on_cancelled(message, queue)
            else:
                await on_message(message)
        except asyncio.CancelledError:
            if not message.processed:
                await self.on_cancelled(message, queue)
            raise
        finally:
            self._working.discard(task)

    async def stop(self) -> int:
        """Stop taking messages; wait ``shutdown_timeout`` s for the handlers in
        flight; cancel the rest. Returns how many were cancelled."""
        self.stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(*CHANNEL_ERRORS):
                await queue.cancel(tag)
        self._consumers.clear()
        if not self._working:
            return 0
        _, late = await asyncio.wait(list(self._working), timeout=self.shutdown_timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        return len(late)

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        self._consumers.clear()
        if channel is not None and not channel.is_closed:
            await channel.close()
