"""RPC with retries: a remote method that is not ready yet is retried on a schedule.

``quote`` answers on its third attempt: the caller's ``await`` simply returns the
price. ``settle`` never gets ready: once its two retries are spent the caller gets
``Backoff.Expired``. Needs RabbitMQ on 127.0.0.1:5672 (or ``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/rpc.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid

import aio_pika

from aio_backoff import Backoff, BackoffRPC

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class PriceNotReady(Backoff):
    schedule = (100, 200)  # ms: the first retry after 100 ms, then every 200 ms
    limit = 5
    random_sigma = 0  # no jitter, so that the timeline below is exact


class LedgerClosed(Backoff):
    schedule = (50,)
    limit = 2
    random_sigma = 0


started = time.monotonic()
attempts = 0


def stamp(text: str) -> None:
    print(f"+{(time.monotonic() - started) * 1000:5.0f} ms  {text}")


async def quote(*, sku: str) -> float:
    global attempts  # noqa: PLW0603 - a demo counter
    attempts += 1
    if attempts < 3:
        stamp(f"quote({sku!r}) attempt {attempts}: price not ready, backing off")
        raise PriceNotReady
    stamp(f"quote({sku!r}) attempt {attempts}: answering")
    return 42.0


async def settle(*, order: int) -> str:
    stamp(f"settle({order}): ledger closed, backing off")
    raise LedgerClosed


async def main() -> None:
    # the library logs one line per retry decision (attempt, limit, delay, queue)
    logging.basicConfig(stream=sys.stdout, format="           log: %(message)s")
    logging.getLogger("aio_backoff").setLevel(logging.INFO)
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        rpc = await BackoffRPC.create(channel)
        suffix = uuid.uuid4().hex[:6]  # so that several runs never share queues
        await rpc.register(
            f"example.quote.{suffix}", quote, auto_delete=True, durable=True
        )
        await rpc.register(
            f"example.settle.{suffix}", settle, auto_delete=True, durable=True
        )

        price = await rpc.call(f"example.quote.{suffix}", {"sku": "A-1"})
        stamp(f"quote: {price} after {attempts} attempts")

        try:
            await rpc.call(f"example.settle.{suffix}", {"order": 7})
        except Backoff.Expired as error:
            stamp(f"caller got Backoff.Expired: {error}")
        await rpc.close()


if __name__ == "__main__":
    asyncio.run(main())
