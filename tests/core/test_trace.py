"""``add_traceparent``: the current span's W3C trace context on a copy's headers, the
one function both stacks call (aio_backoff/core/_trace.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from aio_backoff.core import TRACEPARENT_HEADER
from aio_backoff.core._trace import TRACESTATE_HEADER, add_traceparent

pytestmark = [pytest.mark.core, pytest.mark.timeout(10)]

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
INCOMING_STATE = "congo=t61rcWkgMzE"
TRACER = TracerProvider().get_tracer("tests.core.test_trace")


def own() -> dict[str, object]:
    return {TRACEPARENT_HEADER: INCOMING, TRACESTATE_HEADER: INCOMING_STATE, "k": 1}


def test_without_a_span_the_headers_are_left_as_they_are() -> None:
    headers = own()
    add_traceparent(headers)
    assert headers == own()
    empty: dict[str, object] = {}
    add_traceparent(empty)
    assert empty == {}


def test_a_span_replaces_traceparent_and_drops_a_tracestate_it_has_not() -> None:
    headers = own()
    with TRACER.start_as_current_span("attempt") as span:
        add_traceparent(headers)
    context = span.get_span_context()
    assert headers == {
        TRACEPARENT_HEADER: (
            f"00-{context.trace_id:032x}-{context.span_id:016x}"
            f"-{context.trace_flags:02x}"
        ),
        "k": 1,
    }


def test_a_span_with_a_tracestate_puts_its_own() -> None:
    context = SpanContext(
        trace_id=0x1,
        span_id=0x2,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("rojo", "00f067aa0ba902b7")]),
    )
    headers = own()
    with trace.use_span(NonRecordingSpan(context)):
        add_traceparent(headers)
    assert headers[TRACEPARENT_HEADER] == f"00-{1:032x}-{2:016x}-01"
    assert headers[TRACESTATE_HEADER] == "rojo=00f067aa0ba902b7"
