"""The ``async with retrier.process(...)`` form, and what happens on expiry.

A message that never succeeds is retried twice (50 ms apart); then the default
final action parks it in ``{queue}.parked`` with the error in its headers, and
``Backoff.Expired`` comes out of the ``async with`` block, chained from the last
``Backoff``. Needs RabbitMQ on 127.0.0.1:5672 (or ``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/expiry.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import Backoff, Retrier, parking_queue_name

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class StockNotThere(Backoff):
    schedule = (50,)
    limit = 2
    random_sigma = 0


async def main() -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"picking.{uuid.uuid4().hex[:8]}", durable=True
        )
        parking = parking_queue_name(queue.name)
        retrier = Retrier(channel, backoff=StockNotThere)
        gave_up = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                async with retrier.process(message, queue=queue):
                    print(f"attempt {message.headers.get('backoff-retries', 0) + 1}")
                    raise StockNotThere
            except Backoff.Expired as error:
                print(f"expired: {error} (cause: {error.__cause__!r})")
                gave_up.set()

        tag = await queue.consume(on_message)
        await channel.default_exchange.publish(
            aio_pika.Message(b"pick item 7"), routing_key=queue.name
        )
        async with asyncio.timeout(10):
            await gave_up.wait()
        await queue.cancel(tag)

        parked_queue = await channel.declare_queue(parking, durable=True)
        parked = await parked_queue.get(timeout=5)
        await parked.ack()
        print(f"parked in {parking!r}: {parked.body!r}")
        print(f"  backoff-error: {parked.headers['backoff-error']}")
        print(f"  backoff-queue: {parked.headers['backoff-queue']}")

        await retrier.close()
        await parked_queue.delete()
        await queue.delete()


if __name__ == "__main__":
    asyncio.run(main())
