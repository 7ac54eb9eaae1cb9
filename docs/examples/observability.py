"""Hooks, Prometheus and OpenTelemetry on one retrying consumer.

A message that never succeeds is retried twice (50 ms apart), then parked. A plain
callable prints each event; ``prometheus_hooks`` and ``otel_hooks`` count the same
events (a registry and a meter provider of this example's own; a service passes its
own or uses the defaults). Needs RabbitMQ on 127.0.0.1:5672 (or
``AIO_BACKOFF_AMQP_URL``) and ``pip install 'aio-backoff[otel,prometheus]'
opentelemetry-sdk``::

    .venv/bin/python docs/examples/observability.py
"""

from __future__ import annotations

import asyncio
import os
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from aio_backoff import Backoff, Hooks, Retrier, parking_queue_name
from aio_backoff.events import Event, Parked
from aio_backoff.otel import otel_hooks
from aio_backoff.prometheus import prometheus_hooks

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


class StockNotThere(Backoff):
    schedule = (50,)
    limit = 2
    random_sigma = 0


async def main() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    parked = asyncio.Event()

    def show(event: Event) -> None:
        name = type(event).__name__
        fields = {k: v for k, v in vars_of(event).items() if k not in {"queue"}}
        print(f"{name:9s} {fields}")
        if isinstance(event, Parked):
            parked.set()

    hooks = (
        Hooks(every=show)
        + prometheus_hooks(registry)
        + otel_hooks(MeterProvider(metric_readers=[reader]))
    )
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            f"picking.{uuid.uuid4().hex[:8]}", durable=True
        )
        retrier = Retrier(channel, backoff=StockNotThere, hooks=hooks)

        async def handle(message: AbstractIncomingMessage) -> None:
            raise StockNotThere

        await retrier.consume(queue, handle)
        await channel.default_exchange.publish(
            aio_pika.Message(b"pick item 7", message_id="order-7"),
            routing_key=queue.name,
        )
        async with asyncio.timeout(10):
            await parked.wait()
        await retrier.stop()

        labels = {"queue": queue.name}
        retries = registry.get_sample_value(
            "aio_backoff_retries_total", {**labels, "exception": "StockNotThere"}
        )
        expired = registry.get_sample_value(
            "aio_backoff_expired_total", {**labels, "exception": "StockNotThere"}
        )
        delay = registry.get_sample_value("aio_backoff_delay_seconds_sum", labels)
        print(f"prometheus: retries {retries}, expired {expired}, delay {delay} s")
        data = reader.get_metrics_data()
        names = sorted(
            metric.name
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for metric in scope.metrics
        )
        print(f"opentelemetry: {', '.join(names)}")

        await channel.queue_delete(parking_queue_name(queue.name))
        await queue.delete()


def vars_of(event: Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__slots__}


if __name__ == "__main__":
    asyncio.run(main())
