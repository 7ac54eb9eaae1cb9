"""An aio-pika Retrier for the nameko suite's cross-stack tests, run as a process of
its own (the nameko suite's process is monkeypatched by eventlet).

``python -m tests.nameko.aio_consumer AMQP_URL QUEUE TOPOLOGY REPORT DELAY_MS LIMIT``

Consumes the durable ``QUEUE`` with a Retrier of ``TOPOLOGY``, every retry
``DELAY_MS`` later, at most ``LIMIT`` retries. Each message is a JSON job ``{"key": str,
"failures": int}``: it backs off while it has been retried fewer than ``failures``
times, then succeeds. Every delivery appends a JSON line ``{"side": "asyncio", "key",
"retries", "outcome", "link"}`` to ``REPORT`` (outcome ``Backoff``, ``ok`` or
``Expired``; link: the span id, 16 hex digits, that ``retry_links`` of the message's
headers links to, or null); ``ready`` is printed once it consumes. SIGTERM stops it
gracefully.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import ExpiredMessage, Retrier, backoff_class, park, retries_done
from aio_backoff.otel import retry_links


def append(report: str, record: dict[str, Any]) -> None:
    with open(report, "a") as lines:
        lines.write(json.dumps({"side": "asyncio", **record}) + "\n")


async def main(
    url: str, queue_name: str, topology: Any, report: str, delay_ms: str, limit: str
) -> None:
    shared = backoff_class(
        schedule=(int(delay_ms),), limit=int(limit), random_sigma=0, name="Shared"
    )
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    retrier = Retrier(channel, backoff=shared, topology=topology)

    async def handle(message: AbstractIncomingMessage) -> None:
        job = json.loads(message.body)
        retries = retries_done(message.headers)
        failing = retries < job["failures"]
        outcome = "Backoff" if failing else "ok"
        links = retry_links(message.headers)
        link = format(links[0].context.span_id, "016x") if links else None
        append(
            report,
            {"key": job["key"], "retries": retries, "outcome": outcome, "link": link},
        )
        if failing:
            raise shared()

    async def on_expired(expired: ExpiredMessage) -> None:
        job = json.loads(expired.message.body)
        retries = retries_done(expired.message.headers)
        append(report, {"key": job["key"], "retries": retries, "outcome": "Expired"})
        await park(expired)

    queue = await channel.declare_queue(queue_name, durable=True)
    await retrier.consume(queue, handle, on_expired=on_expired)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await retrier.stop()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
