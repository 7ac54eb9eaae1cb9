"""A traced attempt on the asyncio stack, for the nameko suite's cross-stack trace
test, run as a process of its own (the nameko suite's process is monkeypatched by
eventlet).

``python -m tests.nameko.aio_traced AMQP_URL QUEUE TOPOLOGY DELAY_MS``

Consumes the durable ``QUEUE`` and prints ``ready``. The first delivery cancels the
consumer, so that its copy can only come back to another consumer of ``QUEUE``; then,
in a span of an SDK ``TracerProvider``, a Retrier of ``TOPOLOGY`` processes it and it
raises ``Backoff``: its copy, ``DELAY_MS`` later, carries the span's ``traceparent``
(the pattern of docs/observability.md). Once the copy is placed and the original
acked, it prints the span's ids, a JSON line ``{"trace_id": 32 hex digits,
"span_id": 16 hex digits}``, and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.sdk.trace import TracerProvider

from aio_backoff import Retrier, backoff_class
from aio_backoff.otel import retry_links


async def main(url: str, queue_name: str, topology: Any, delay_ms: str) -> None:
    once = backoff_class(schedule=(int(delay_ms),), random_sigma=0, name="Once")
    tracer = TracerProvider().get_tracer("tests.nameko.aio_traced")
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1)
    retrier = Retrier(channel, backoff=once, topology=topology)
    queue = await channel.declare_queue(queue_name, durable=True)
    await retrier.publisher.declare(targets=[queue.name])
    delivered: asyncio.Future[AbstractIncomingMessage] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_message(message: AbstractIncomingMessage) -> None:
        if not delivered.done():
            delivered.set_result(message)

    tag = await queue.consume(on_message)
    print("ready", flush=True)
    message = await delivered
    await queue.cancel(tag)
    with tracer.start_as_current_span(
        "attempt", links=retry_links(message.headers)
    ) as span:
        async with retrier.process(message, queue=queue):
            raise once
    context = span.get_span_context()
    ids = {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
    print(json.dumps(ids), flush=True)
    await retrier.close()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
