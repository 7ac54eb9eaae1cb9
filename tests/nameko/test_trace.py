"""nameko_bridge's delayed copies carry the W3C trace context of the current span, as
the asyncio stack's do (docs/observability.md, "Traces across the delay").

The span is current in the worker's greenthread (``tests/nameko/tracing.py``): two
workers at once each put their own span on their own copy. Without a current span a
copy keeps the message's own ``traceparent``, as on the asyncio stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest.mock import Mock

import eventlet
import pytest
from kombu.messaging import Exchange, Queue
from opentelemetry import trace

from aio_backoff import TRACEPARENT_HEADER, retries_done
from aio_backoff.otel import retry_context, retry_links
from nameko_bridge import Backoff, BackoffPublisher
from nameko_bridge.backoff import TOPOLOGY_CONFIG_KEY
from nameko_bridge.messaging import consume

from .conftest import eventually, publish_to
from .tracing import EXPORTER, TRACER, Traced, WorkerContext, span_id

pytestmark = pytest.mark.timeout(30)

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
"""The ``traceparent`` a producer put on a message (the W3C example)."""
INCOMING_STATE = "congo=t61rcWkgMzE"
TRACESTATE = "tracestate"

Attempt = tuple[str, int, dict[str, Any], trace.SpanContext]
"""``(job, retries, the message's headers, the span context current in the worker)``
of one delivery."""


@pytest.fixture(autouse=True)
def no_spans_yet() -> None:
    EXPORTER.clear()


def together(started: set[str], job: str, count: int) -> None:
    """Wait (at most 5 s) until ``count`` workers have got here: their spans are
    current at the same time, each in its own greenthread."""
    started.add(job)
    for _ in range(500):
        if len(started) >= count:
            return
        eventlet.sleep(0.01)
    msg = f"only {sorted(started)} of {count} workers started"
    raise AssertionError(msg)


def run_twice(
    container_factory: Callable[..., Any],
    config: dict[str, Any],
    publish_message: Callable[..., None],
    provider: WorkerContext,
    jobs: dict[str, dict[str, Any]],
) -> list[Attempt]:
    """Run a service whose ``@consume`` backs off once from each job (once every job
    has started), publish ``jobs`` (job -> its headers) and wait until each came
    back; returns every delivery."""
    queue = Queue("jobs", durable=True)
    attempts: list[Attempt] = []
    started: set[str] = set()

    class Service:
        name = "traced"
        ctx = provider

        @consume(queue)
        def handle(self, job: str) -> None:
            headers = dict(self.ctx.data)
            retries = retries_done(headers)
            current = trace.get_current_span().get_span_context()
            attempts.append((job, retries, headers, current))
            if retries == 0:
                together(started, job, len(jobs))
                raise Backoff

    container_factory(Service, config).start()
    for job, headers in jobs.items():
        publish_message(Exchange(""), job, routing_key=queue.name, headers=headers)

    def each_came_back() -> None:
        assert sorted((job, retries) for job, retries, *_ in attempts) == sorted(
            (job, retries) for job in jobs for retries in (0, 1)
        )

    eventually(each_came_back, timeout=10)
    return attempts


@pytest.mark.parametrize("topology", ["per-delay", "ladder", "plugin"])
def test_each_copy_carries_the_span_of_the_attempt_that_raised(
    container_factory: Callable[..., Any],
    request: pytest.FixtureRequest,
    topology: str,
) -> None:
    """The plugin's case runs on the broker that has it (``plugin_config``)."""
    base = request.getfixturevalue(
        "plugin_config" if topology == "plugin" else "rabbit_config"
    )
    # "a" comes with a producer's trace context, which the span's replaces
    jobs = {"a": {TRACEPARENT_HEADER: INCOMING, TRACESTATE: INCOMING_STATE}, "b": {}}
    config = {**base, TOPOLOGY_CONFIG_KEY: topology}
    attempts = run_twice(container_factory, config, publish_to(base), Traced(), jobs)

    first = {job: span for job, retries, _, span in attempts if retries == 0}
    again = {job: headers for job, retries, headers, _ in attempts if retries == 1}
    assert all(span.is_valid for span in first.values())
    # each worker had its own span, current while the copy was placed
    assert first["a"].span_id != first["b"].span_id
    for job, span in first.items():
        headers = again[job]
        assert headers[TRACEPARENT_HEADER] == (
            f"00-{span.trace_id:032x}-{span_id(span)}-{span.trace_flags:02x}"
        )
        carried = retry_context(headers)
        assert carried is not None
        assert (carried.trace_id, carried.span_id) == (span.trace_id, span.span_id)
        [link] = retry_links(headers)
        assert link.context.span_id == span.span_id
    # the producer's tracestate went with its traceparent
    assert TRACESTATE not in again["a"]

    # the spans of the second attempts, exported, link to the first ones
    second = {job: span for job, retries, _, span in attempts if retries == 1}

    def exported() -> dict[int, Any]:
        spans = {span.context.span_id: span for span in EXPORTER.get_finished_spans()}
        assert len(spans) == 4
        return spans

    spans = eventually(exported)
    for job, span in second.items():
        links = spans[span.span_id].links
        assert [link.context.span_id for link in links] == [first[job].span_id]


def test_without_a_span_a_copy_keeps_the_messages_own_trace_context(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    publish_message: Callable[..., None],
) -> None:
    jobs = {
        "with": {TRACEPARENT_HEADER: INCOMING, TRACESTATE: INCOMING_STATE},
        "without": {},
    }
    attempts = run_twice(
        container_factory, rabbit_config, publish_message, WorkerContext(), jobs
    )

    assert not any(span.is_valid for *_, span in attempts)
    again = {job: headers for job, retries, headers, _ in attempts if retries == 1}
    assert again["with"][TRACEPARENT_HEADER] == INCOMING
    assert again["with"][TRACESTATE] == INCOMING_STATE
    assert TRACEPARENT_HEADER not in again["without"]
    assert TRACESTATE not in again["without"]
    assert retry_context(again["without"]) is None
    assert EXPORTER.get_finished_spans() == ()


@pytest.mark.parametrize("topology", ["per-delay", "ladder", "plugin"])
def test_every_topology_puts_the_current_span_on_the_copy(topology: str) -> None:
    """No broker: what each topology hands to the publish."""
    publisher = BackoffPublisher()
    publisher.topology = topology  # type: ignore[assignment]
    publisher._declarer = Mock()
    publisher._publish_confirmed = Mock()  # type: ignore[method-assign]
    message = Mock(body=b"{}", properties={}, headers={TRACESTATE: INCOMING_STATE})
    plan = publisher.plan(Backoff(), message.headers, "target")
    with TRACER.start_as_current_span("attempt") as span:
        publisher.publish_copy(message, plan)

    [call] = publisher._publish_confirmed.call_args_list
    headers = call.kwargs["headers"]
    carried = retry_context(headers)
    assert carried is not None
    assert carried.span_id == span.get_span_context().span_id
    assert TRACESTATE not in headers
    assert TRACEPARENT_HEADER not in plan.headers  # the plan itself is unchanged
