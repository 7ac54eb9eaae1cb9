"""OpenTelemetry: the SDK's in-memory reader sees the counters and histograms, and a
retried message's trace links to the attempt that raised ``Backoff``."""

from __future__ import annotations

from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from aio_backoff import TRACEPARENT_HEADER, Backoff, Retrier
from aio_backoff.events import NotPlaced
from aio_backoff.otel import INSTRUMENTS, otel_hooks, retry_context, retry_links
from tests.aio.retrying import get_one, publish
from tests.observability.scenario import TWICE, retried_twice_then_parked

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
"""The ``traceparent`` a producer put on a message (the W3C example)."""
INCOMING_STATE = "congo=t61rcWkgMzE"
OWN_TRACE_CONTEXT = {TRACEPARENT_HEADER: INCOMING, "tracestate": INCOMING_STATE}
"""The trace context a producer put on a message: its traceparent and tracestate."""


@pytest.fixture
async def retrier(make_retrier: Any, target: AbstractQueue) -> Retrier:
    """A Retrier backing off ``TWICE``, its topology for ``target`` declared."""
    retrier: Retrier = make_retrier(backoff=TWICE)
    await retrier.publisher.declare(targets=[target.name])
    return retrier


async def the_copy(target: AbstractQueue) -> AbstractIncomingMessage:
    """The copy a ``Backoff`` put back on ``target``, acked."""
    copy = await get_one(target)
    await copy.ack()
    return copy


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points."""
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_the_reader_sees_retries_expiry_parking_delay_and_lateness(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, declared: Any
) -> None:
    reader = InMemoryMetricReader()
    hooks = otel_hooks(MeterProvider(metric_readers=[reader]))
    await retried_twice_then_parked(channel, target, make_retrier, declared, hooks)
    hooks.not_placed[0](
        NotPlaced(target.name, "m", 1, 2, 30, permanent=True, reason="refused")
    )
    seen = points(reader)
    assert set(seen) == set(INSTRUMENTS) - {"aio_backoff.replayed"}
    [retries] = seen["aio_backoff.retries"]
    assert retries.value == 2
    assert dict(retries.attributes) == {"queue": target.name, "exception.type": "Twice"}
    [expired] = seen["aio_backoff.expired"]
    assert expired.value == 1
    [parked] = seen["aio_backoff.parked"]
    assert (parked.value, dict(parked.attributes)) == (1, {"queue": target.name})
    [not_placed] = seen["aio_backoff.not_placed"]
    assert dict(not_placed.attributes) == {"queue": target.name, "permanent": True}
    [delay] = seen["aio_backoff.delay"]
    assert (delay.count, delay.sum) == (2, 60)
    [lateness] = seen["aio_backoff.lateness"]
    assert lateness.count == 2
    assert 0 <= lateness.min <= lateness.max < 5000


async def test_a_retried_copy_links_to_the_attempt_that_raised(
    channel: AbstractChannel, target: AbstractQueue, retrier: Retrier
) -> None:
    tracer = TracerProvider().get_tracer("test")
    await publish(channel, target.name)
    first = await get_one(target)
    assert retry_links(first.headers) == []
    with tracer.start_as_current_span("attempt") as span:
        async with retrier.process(first, queue=target):
            raise Backoff
    copy = await the_copy(target)
    assert isinstance(copy.headers[TRACEPARENT_HEADER], str)
    attempt = span.get_span_context()
    context = retry_context(copy.headers)
    assert context is not None
    assert (context.trace_id, context.span_id) == (attempt.trace_id, attempt.span_id)
    [link] = retry_links(copy.headers)
    assert link.context.span_id == attempt.span_id
    with tracer.start_as_current_span(
        "retry", links=retry_links(copy.headers)
    ) as retry:
        pass
    assert retry.links[0].context.span_id == attempt.span_id  # type: ignore[attr-defined]


async def test_no_span_no_traceparent(
    channel: AbstractChannel, target: AbstractQueue, retrier: Retrier
) -> None:
    await publish(channel, target.name)
    async with retrier.process(await get_one(target), queue=target):
        raise Backoff
    copy = await the_copy(target)
    assert TRACEPARENT_HEADER not in copy.headers
    assert retry_context(copy.headers) is None


async def test_no_span_keeps_the_messages_own_trace_context(
    channel: AbstractChannel, target: AbstractQueue, retrier: Retrier
) -> None:
    """As nameko_bridge's copies do (tests/nameko/test_trace.py)."""
    await publish(channel, target.name, headers=OWN_TRACE_CONTEXT)
    async with retrier.process(await get_one(target), queue=target):
        raise Backoff
    copy = await the_copy(target)
    assert copy.headers[TRACEPARENT_HEADER] == INCOMING
    assert copy.headers["tracestate"] == INCOMING_STATE


async def test_a_span_replaces_the_messages_own_trace_context(
    channel: AbstractChannel, target: AbstractQueue, retrier: Retrier
) -> None:
    """The span's traceparent, and not the message's tracestate next to it."""
    tracer = TracerProvider().get_tracer("test")
    await publish(channel, target.name, headers=OWN_TRACE_CONTEXT)
    first = await get_one(target)
    with tracer.start_as_current_span("attempt") as span:
        async with retrier.process(first, queue=target):
            raise Backoff
    copy = await the_copy(target)
    context = retry_context(copy.headers)
    assert context is not None
    assert context.span_id == span.get_span_context().span_id
    assert "tracestate" not in copy.headers
