"""A retried message's trace: the attempt that comes back links to the one that
raised ``Backoff``.

Each attempt runs in a span of its own, opened with ``links=retry_links(headers)``;
the span is current while ``retrier.process()`` places the delayed copy, so the copy
carries its ``traceparent``. The spans go to an in-memory exporter, printed at the
end. Needs RabbitMQ on 127.0.0.1:5672 (or ``AIO_BACKOFF_AMQP_URL``) and
``pip install 'aio-backoff[otel]' opentelemetry-sdk``::

    .venv/bin/python docs/examples/tracing.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aio_backoff import Backoff, Retrier
from aio_backoff.otel import retry_links

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class LabelPrinterBusy(Backoff):
    schedule = (50,)
    random_sigma = 0


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("label-printer")
    printed = asyncio.Event()

    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"labels.{uuid.uuid4().hex[:8]}", durable=True
        )
        retrier = Retrier(channel, backoff=LabelPrinterBusy)

        async def on_message(message: AbstractIncomingMessage) -> None:
            links = retry_links(message.headers)
            with tracer.start_as_current_span("print label", links=links):
                async with retrier.process(message, queue=queue):
                    if not links:  # the first attempt
                        raise LabelPrinterBusy
                    printed.set()

        tag = await queue.consume(on_message)
        await channel.default_exchange.publish(
            aio_pika.Message(b"label 12", message_id="label-12"),
            routing_key=queue.name,
        )
        async with asyncio.timeout(10):
            await printed.wait()
        await queue.cancel(tag)
        await retrier.close()
        await queue.delete()

    first, second = exporter.get_finished_spans()
    for attempt, span in enumerate((first, second), start=1):
        links = [f"{link.context.span_id:016x}" for link in span.links]
        print(
            f"attempt {attempt}: span {span.context.span_id:016x} "
            f"links to {links or 'nothing'}"
        )
    linked = second.links[0].context
    same = (linked.trace_id, linked.span_id) == (
        first.context.trace_id,
        first.context.span_id,
    )
    print(f"the retry links to the attempt that raised Backoff: {same}")


if __name__ == "__main__":
    asyncio.run(main())
