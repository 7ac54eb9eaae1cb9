"""A consumer with retries on the fault node, and a fast publisher of test messages.

The scenarios drive the library only through its public API (``Retrier``,
``NamekoService``, ``NamekoRpcClient``).
"""

from __future__ import annotations

import asyncio
import contextlib
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
        """Close the retrier and the channel; give up after 5 s (a publish that
        waits for a confirm that never comes would hold it for ever)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
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
    until_delayed: bool = False,
    queue_arguments: Mapping[str, Any] | None = None,
    **retrier_options: Any,
) -> Consumer:
    """Consume ``queue`` (declared durable) with a ``Retrier``. The handler raises
    ``Backoff()`` on the first ``fail_runs`` runs of each message id, then succeeds;
    each run takes ``work_s`` seconds. With ``until_delayed`` it raises until the
    message comes back through a delay queue: an original that went straight back
    to its queue (its copy not placed) is not taken for the copy."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    declared = await channel.declare_queue(
        queue, durable=True, arguments=dict(queue_arguments or {})
    )
    ledger.watch(f"{queue}.parked")
    if "exchange" in retrier_options:
        retrier_options["delay_exchange"] = retrier_options.pop("exchange")
    # the scenarios break nameko-amqp-retry's per-delay queues (the table in
    # docs/reliability.md); the ladder's node loss is tests/cluster's
    retrier_options.setdefault("topology", "per-delay")
    retrier = Retrier(channel, backoff=backoff, **retrier_options)

    async def handle(message: AbstractIncomingMessage) -> None:
        key = message.message_id or "?"
        if work_s:
            await asyncio.sleep(work_s)
        before = ledger.ran(key)
        if (not came_through_delay(message)) if until_delayed else before < fail_runs:
            raise Backoff
        ledger.succeeded(key)

    await retrier.consume(declared, handle)
    return Consumer(channel, declared, retrier)


def came_through_delay(message: AbstractIncomingMessage) -> bool:
    """Whether a delay queue dead-lettered this message: the broker adds an
    ``x-death`` entry naming the ``backoff--{N}ms`` queue, with an integer count
    (3.10 and 4.x alike; a forged entry with a text count does not count)."""
    deaths = (message.headers or {}).get("x-death")
    return isinstance(deaths, list) and any(
        isinstance(death, dict)
        and str(death.get("queue", "")).startswith("backoff--")
        and type(death.get("count")) is int
        for death in deaths
    )


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
