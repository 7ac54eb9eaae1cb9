"""The README's demo: a handler backs off three times, then succeeds.

Prints a timeline (attempt, delay waited, elapsed time) and the library's own log
line for each retry decision. Needs RabbitMQ on 127.0.0.1:5672 (or
``AIO_BACKOFF_AMQP_URL``); declares one queue and deletes it again::

    .venv/bin/python docs/examples/demo.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import RETRIES_HEADER, Backoff, Retrier

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class UpstreamNotReady(Backoff):
    schedule = (200, 400, 800)  # ms; past the end the last item repeats
    limit = 5
    random_sigma = 0  # no jitter, so that the timeline is exact


READY_ON_ATTEMPT = 4


async def run(amqp_url: str = AMQP_URL) -> float:
    """Run the demo; returns the seconds it took until the handler succeeded."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"aio-backoff.demo.{uuid.uuid4().hex[:8]}", durable=True
        )
        retrier = Retrier(channel, backoff=UpstreamNotReady)
        done = asyncio.Event()
        started = time.monotonic()

        async def handle(message: AbstractIncomingMessage) -> None:
            elapsed = time.monotonic() - started
            retries = message.headers.get(RETRIES_HEADER, 0)
            waited = message.headers.get("backoff")
            attempt = f"attempt {retries + 1}"
            after = "first delivery" if waited is None else f"waited {waited} ms"
            if retries + 1 < READY_ON_ATTEMPT:
                print(f"  {elapsed:6.3f}s  {attempt}  ({after})  not ready: Backoff")
                raise UpstreamNotReady
            print(f"  {elapsed:6.3f}s  {attempt}  ({after})  done")
            done.set()

        print(
            f"queue {queue.name!r}: schedule {UpstreamNotReady.schedule} ms, "
            f"limit {UpstreamNotReady.limit}, ready on attempt {READY_ON_ATTEMPT}"
        )
        try:
            tag = await retrier.consume(queue, handle)
            await channel.default_exchange.publish(
                aio_pika.Message(b"order #1", message_id="order-1"),
                routing_key=queue.name,
            )
            async with asyncio.timeout(10):
                await done.wait()
            took = time.monotonic() - started
            await queue.cancel(tag)
        finally:
            await retrier.close()
            await queue.delete(if_unused=False, if_empty=False)
    print(f"succeeded after {READY_ON_ATTEMPT} attempts in {took:.2f} s")
    return took


def main() -> int:
    log = logging.getLogger("aio_backoff")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("            log: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        asyncio.run(run())
    except (ConnectionError, aio_pika.exceptions.AMQPConnectionError) as error:
        print(
            f"cannot reach RabbitMQ at {AMQP_URL} ({error}). Start it "
            "(`scripts/broker.sh`, or `rabbitmq-server -detached`) or set "
            "AIO_BACKOFF_AMQP_URL.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
