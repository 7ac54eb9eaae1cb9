"""What the library does when something fails (docs/reliability.md), in one run.

1. A ``Backoff`` subclass with a bad setting is refused where it is defined.
2. A delayed copy the broker refuses (another service declared the delay queue with
   another grace period: ``406 PRECONDITION_FAILED``) is a *permanent* failure: the
   message is parked at once with the reason in ``backoff-error``, instead of going
   back to its queue over and over.
3. ``Retrier.stop()`` stops taking messages and lets the handlers in flight finish.

Needs RabbitMQ on 127.0.0.1:5672 (or ``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/reliability.py
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import (
    Backoff,
    BackoffConfigError,
    FailurePolicy,
    Retrier,
    delay_queue,
    parking_queue_name,
)

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def bad_setting_is_refused() -> None:
    try:

        class Broken(Backoff):
            limit = 3.0  # a float: how many retries is 3.0?

    except BackoffConfigError as error:
        print(f"refused at definition: {error}")


DELAY_MS = random.randrange(3_000_000, 4_000_000)
"""A delay no other service on this broker uses: delay queues are named by their
delay alone (``backoff--{ms}ms``), and this example makes its own refuse copies."""


class UpstreamDown(Backoff):
    schedule = (DELAY_MS,)
    limit = 3
    random_sigma = 0


async def refused_copy_is_parked_once(channel: aio_pika.abc.AbstractChannel) -> None:
    exchange = f"example.delay.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(
        f"example.orders.{uuid.uuid4().hex[:8]}", durable=True
    )
    # "another service" declared the delay queue with a 1 s grace period; this
    # consumer's publisher would declare it with the default 5 s one
    other = delay_queue(DELAY_MS, delay_exchange=exchange, grace_ms=1000)
    await channel.declare_exchange(exchange, "headers", durable=True)
    await channel.declare_queue(other.name, durable=True, arguments=other.arguments)

    retrier = Retrier(
        channel,
        backoff=UpstreamDown,
        topology="per-delay",  # the queues nameko-amqp-retry 0.7.1 declares
        delay_exchange=exchange,
        failure_policy=FailurePolicy(max_transient_tries=3, first_pause_s=0.5),
    )
    runs = 0

    async def handle(message: AbstractIncomingMessage) -> None:
        nonlocal runs
        runs += 1
        raise UpstreamDown

    await retrier.consume(queue, handle)
    await channel.default_exchange.publish(
        aio_pika.Message(b"order 7", message_id="order-7"), routing_key=queue.name
    )
    parking = await channel.declare_queue(parking_queue_name(queue.name), durable=True)
    async with asyncio.timeout(10), parking.iterator() as waiting:
        parked = await anext(aiter(waiting))
    await parked.ack()
    print(f"handler runs: {runs}")
    print(f"parked in {parking.name!r} because: {parked.headers['backoff-error']}")

    await retrier.stop(timeout=5)
    print("stopped: no more messages taken, nothing in flight")
    for name in (queue.name, parking.name, other.name):
        await channel.queue_delete(name)
    await channel.exchange_delete(exchange)


async def main() -> None:
    bad_setting_is_refused()
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        await refused_copy_is_parked_once(await connection.channel())


if __name__ == "__main__":
    asyncio.run(main())
