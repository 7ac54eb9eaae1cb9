"""Quickstart: retry a consumer's message when a dependency is not ready yet.

The handler fails with ``ConnectionError`` twice; ``retry_for`` turns that into the
``PaymentGatewayBusy`` policy, so the message comes back after 100 ms and then
200 ms, and the third attempt succeeds. Needs RabbitMQ on 127.0.0.1:5672 (or
``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import Backoff, Retrier

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class PaymentGatewayBusy(Backoff):
    schedule = (100, 200, 400)  # ms between attempts; the last one repeats
    limit = 5  # then Backoff.Expired, and the message is parked (see docs/asyncio.md)
    random_sigma = 0  # jitter off for a predictable example (default: 100 ms)


calls = 0
paid = asyncio.Event()


async def charge(message: AbstractIncomingMessage) -> None:
    global calls  # noqa: PLW0603 - a counter for the example
    calls += 1
    if calls < 3:
        raise ConnectionError("payment gateway unreachable")
    print(f"charged {message.body.decode()} on attempt {calls}")
    paid.set()


async def main() -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"payments.{uuid.uuid4().hex[:8]}", durable=True
        )

        retrier = Retrier(
            channel, backoff=PaymentGatewayBusy, retry_for=(ConnectionError,)
        )
        tag = await retrier.consume(queue, charge)

        await channel.default_exchange.publish(
            aio_pika.Message(b"order-42"), routing_key=queue.name
        )
        async with asyncio.timeout(10):
            await paid.wait()

        await queue.cancel(tag)
        await retrier.close()
        await queue.delete()


if __name__ == "__main__":
    asyncio.run(main())
