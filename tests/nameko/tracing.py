"""OpenTelemetry around nameko workers, for the trace tests of the nameko suite.

:class:`Traced` opens a span when a worker is set up and ends it with the worker's
result, current in the worker's greenthread all that time, as nameko's
OpenTelemetry instrumentation does: an entrypoint places a delayed copy after the
service method has returned, so a span opened inside the method has ended by then.
A retried attempt's span links to the attempt that raised ``Backoff``
(``retry_links`` of the message's headers, which nameko gives the worker as
``worker_ctx.data``). Spans go to :data:`EXPORTER`, kept in memory.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from nameko.extensions import DependencyProvider
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from aio_backoff.otel import retry_links

__all__ = ["EXPORTER", "TRACER", "Traced", "WorkerContext", "span_id", "trace_id"]

EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = _PROVIDER.get_tracer("tests.nameko.tracing")


def span_id(span_context: trace.SpanContext) -> str:
    """The 16 hex digits of a span id, as ``traceparent`` writes it."""
    return format(span_context.span_id, "016x")


def trace_id(span_context: trace.SpanContext) -> str:
    """The 32 hex digits of a trace id, as ``traceparent`` writes it."""
    return format(span_context.trace_id, "032x")


class WorkerContext(DependencyProvider):  # type: ignore[misc]
    """Gives the worker its context: ``self.ctx.data`` are the message's headers."""

    def get_dependency(self, worker_ctx: Any) -> Any:
        return worker_ctx


class Traced(WorkerContext):
    """:class:`WorkerContext`, and a span named after the entrypoint around each
    worker."""

    def __init__(self) -> None:
        self.active: dict[Any, tuple[trace.Span, Token[Context]]] = {}

    def worker_setup(self, worker_ctx: Any) -> None:
        span = TRACER.start_span(
            worker_ctx.entrypoint.method_name, links=retry_links(worker_ctx.data)
        )
        token = context.attach(trace.set_span_in_context(span))
        self.active[worker_ctx] = (span, token)

    def worker_result(
        self, worker_ctx: Any, result: Any = None, exc_info: Any = None
    ) -> None:
        span, token = self.active.pop(worker_ctx)
        context.detach(token)
        span.end()
