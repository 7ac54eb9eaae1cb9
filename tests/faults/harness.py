"""A consumer with retries on the fault node, and a fast publisher of test messages.

The scenarios drive the library only through its public API (``Retrier``,
``NamekoService``, ``NamekoRpcClient``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from aio_backoff import Backoff, Retrier
from tests.faults.ledger import Ledger


class Quick(Backoff):
    """Tens of milliseconds, five retries."""

    schedule = (20, 40)
    limit = 5
    random_sigma = 0


@dataclass
class Consumer:
    """A ``Retrier`` consuming one queue; its handler reports to a ledger."""

    channel: AbstractChannel
    queue: AbstractQueue
    retrier: Retrier

    async def close(self) -> None:
        await self.retrier.close()
        if not self.channel.is_closed:
            await self.channel.close()


async def start_consumer(
    connection: AbstractConnection,
    queue: str,
    ledger: Ledger,
    *,
    backoff: type[Backoff] = Quick,
    fail_runs: int = 1,
    prefetch: int = 50,
    work_s: float = 0,
    queue_arguments: Mapping[str, Any] | None = None,
    **retrier_options: Any,
) -> Consumer:
    """Consume ``queue`` (declared durable) with a ``Retrier``. The handler raises
    ``Backoff()`` on the first ``fail_runs`` runs of each message id, then succeeds;
    each run takes ``work_s`` seconds."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    declared = await channel.declare_queue(
        queue, durable=True, arguments=dict(queue_arguments or {})
    )
    ledger.watch(f"{queue}.parked")
    retrier = Retrier(channel, backoff=backoff, **retrier_options)

    async def handle(message: AbstractIncomingMessage) -> None:
        key = message.message_id or "?"
        if work_s:
            await asyncio.sleep(work_s)
        if ledger.ran(key) < fail_runs:
            raise Backoff
        ledger.succeeded(key)

    await retrier.consume(declared, handle)
    return Consumer(channel, declared, retrier)


async def publish(
    connection: AbstractConnection,
    queue: str,
    ids: Iterable[str],
    *,
    headers: Mapping[str, Any] | None = None,
    batch: int = 500,
) -> None:
    """Publish one persistent message per id to ``queue`` (default exchange),
    confirmed, ``batch`` at a time."""
    async with connection.channel() as channel:
        pending = []
        for key in ids:
            message = aio_pika.Message(
                key.encode(),
                message_id=key,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=dict(headers or {}),
            )
            pending.append(channel.default_exchange.publish(message, routing_key=queue))
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)


async def wait_for(
    condition: Callable[[], Any], seconds: float, what: str, *, poll: float = 0.1
) -> None:
    """Wait until ``condition()`` (or what it returns, awaited) is true, or fail
    saying ``what``."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(poll)
    except TimeoutError:
        msg = f"{what}: not within {seconds} s"
        raise AssertionError(msg) from None


async def depth(connection: AbstractConnection, queue: str) -> int | None:
    """Ready messages in ``queue`` now (a passive declare), None if it is missing."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
    result = declared.declaration_result
    return int(result.message_count or 0)
