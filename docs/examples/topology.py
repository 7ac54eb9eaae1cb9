"""Two topologies on one queue, and what the broker can run (docs/topology.md).

1. ``verify()`` reports the broker's version, whether a quorum ladder survives a
   node (at-least-once dead-lettering) and whether the delayed-message plugin is there.
2. A quorum-ladder consumer and a per-delay consumer share one queue: a message
   retried by both keeps one count, and each copy waits its delay to the millisecond.
3. Both consumers stop; the ladder's 33 queues stay (declared once, shared by every
   service), this run's are deleted.

Needs RabbitMQ on 127.0.0.1:5672 (or ``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/topology.py
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import RETRIES_HEADER, Backoff, Ladder, Retrier, verify

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class Busy(Backoff):
    schedule = (37, 130, 250)  # ms, each to the millisecond: no jitter
    random_sigma = 0
    limit = 5


async def main() -> None:
    report = await verify(AMQP_URL, plugin=False)
    print(f"RabbitMQ {report.version}: quorum ladder {report.quorum_queues}")

    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    run = uuid.uuid4().hex[:8]
    delay_exchange = f"example.{run}"  # this run's own ladder and delay queues
    # durable: RabbitMQ 4.3 refuses transient queues that are not exclusive, and an
    # exclusive one is no ladder target (the publisher binds it from its connection)
    queue = await channel.declare_queue(f"example.jobs.{run}", durable=True)

    ladder = Retrier(
        channel,
        backoff=Busy,
        topology="ladder",
        queue_type="quorum",
        delay_exchange=delay_exchange,
    )
    per_delay = Retrier(
        channel, backoff=Busy, topology="per-delay", delay_exchange=delay_exchange
    )
    last = time.monotonic()
    seen: list[str] = []
    done = asyncio.Event()

    def handler(name: str) -> object:
        async def handle(message: AbstractIncomingMessage) -> None:
            nonlocal last
            now, retries = (
                time.monotonic(),
                (message.headers or {}).get(RETRIES_HEADER, 0),
            )
            waited = f"after {(now - last) * 1000:.0f} ms" if retries else "first"
            seen.append(f"retry {retries} handled by the {name} consumer ({waited})")
            last = now
            if retries < 3:
                raise Busy()
            done.set()

        return handle

    # two consumers on one queue, prefetch 1 each: the broker alternates them
    await channel.set_qos(prefetch_count=1)
    await ladder.consume(queue, handler("ladder"))  # type: ignore[arg-type]
    await per_delay.consume(queue, handler("per-delay"))  # type: ignore[arg-type]
    last = time.monotonic()
    await channel.default_exchange.publish(
        aio_pika.Message(b"job"), routing_key=queue.name
    )
    await asyncio.wait_for(done.wait(), timeout=10)
    print("\n".join(seen))

    await ladder.stop()
    await per_delay.stop()
    await channel.queue_delete(queue.name)
    levels = Ladder(delay_exchange, "quorum")
    for name in levels.queue_names:
        await channel.queue_delete(name)
    for level in range(32):
        await channel.exchange_delete(levels.level(level))
    for name in (levels.deliver_exchange, levels.undeliverable, delay_exchange):
        await channel.exchange_delete(name)
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
