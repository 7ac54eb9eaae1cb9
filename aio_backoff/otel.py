"""OpenTelemetry metrics and trace links for retries (the ``otel`` extra).

``Retrier(..., hooks=otel_hooks(meter_provider))`` counts retries, expiries,
not-placed and parked copies and replays, and records the delays and the lateness of
copies that came back (docs/observability.md lists the instruments).
:func:`retry_links` gives the trace link from a retried message to the attempt that
raised ``Backoff`` (its copy carries that attempt's ``traceparent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace.propagation.tracecontext import (
        TraceContextTextMapPropagator,
    )
except ImportError as missing:  # pragma: no cover - depends on the environment
    msg = (
        "aio_backoff.otel needs OpenTelemetry: pip install 'aio-backoff[otel]' "
        f"({missing})"
    )
    raise ImportError(msg) from missing

from .core._events import (
    CameBack,
    Expired,
    Hooks,
    NotPlaced,
    Parked,
    Replayed,
    Scheduled,
)

__all__ = ["INSTRUMENTS", "otel_hooks", "retry_context", "retry_links"]

INSTRUMENTS: Mapping[str, str] = {
    "aio_backoff.retries": "counter {retry}: copies placed; queue, exception.type",
    "aio_backoff.expired": "counter {message}: retries spent; queue, exception.type",
    "aio_backoff.not_placed": "counter {copy}: copies not placed; queue, permanent",
    "aio_backoff.parked": "counter {message}: messages parked; queue",
    "aio_backoff.replayed": "counter {message}: copies replayed; queue",
    "aio_backoff.delay": "histogram ms: the delay of each copy placed; queue",
    "aio_backoff.lateness": "histogram ms: came back minus due; queue",
}
"""The instruments :func:`otel_hooks` creates: name -> kind, unit and attributes."""

_PROPAGATOR = TraceContextTextMapPropagator()


def otel_hooks(meter_provider: metrics.MeterProvider | None = None) -> Hooks:
    """Hooks that record :data:`INSTRUMENTS` with ``meter_provider`` (default: the
    global one)."""
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("aio_backoff")
    retries = meter.create_counter(
        "aio_backoff.retries", unit="{retry}", description="Delayed copies placed"
    )
    expired = meter.create_counter(
        "aio_backoff.expired", unit="{message}", description="Retries spent"
    )
    not_placed = meter.create_counter(
        "aio_backoff.not_placed", unit="{copy}", description="Copies not placed"
    )
    parked = meter.create_counter(
        "aio_backoff.parked", unit="{message}", description="Messages parked"
    )
    replayed = meter.create_counter(
        "aio_backoff.replayed", unit="{message}", description="Copies replayed"
    )
    delay = meter.create_histogram(
        "aio_backoff.delay", unit="ms", description="Delay of each copy placed"
    )
    lateness = meter.create_histogram(
        "aio_backoff.lateness",
        unit="ms",
        description="When a copy came back minus when it was due",
    )

    def on_scheduled(event: Scheduled) -> None:
        attributes = {"queue": event.queue, "exception.type": event.exception_type}
        retries.add(1, attributes)
        delay.record(event.delay_ms, {"queue": event.queue})

    def on_came_back(event: CameBack) -> None:
        if event.lateness_ms is not None:  # clocks apart can make it negative
            lateness.record(max(event.lateness_ms, 0), {"queue": event.queue})

    def on_expired(event: Expired) -> None:
        attributes = {"queue": event.queue, "exception.type": event.exception_type}
        expired.add(1, attributes)

    def on_not_placed(event: NotPlaced) -> None:
        not_placed.add(1, {"queue": event.queue, "permanent": event.permanent})

    def on_parked(event: Parked) -> None:
        parked.add(1, {"queue": event.queue})

    def on_replayed(event: Replayed) -> None:
        replayed.add(1, {"queue": event.queue})

    return Hooks(
        scheduled=on_scheduled,
        came_back=on_came_back,
        expired=on_expired,
        not_placed=on_not_placed,
        parked=on_parked,
        replayed=on_replayed,
    )


def retry_context(headers: Mapping[str, Any] | None) -> trace.SpanContext | None:
    """The span context of the attempt that placed this copy, or ``None``."""
    if not headers:
        return None
    carrier = {
        key: value
        for key, value in headers.items()
        if key in {"traceparent", "tracestate"} and isinstance(value, str)
    }
    if not carrier:
        return None
    span = trace.get_current_span(_PROPAGATOR.extract(carrier))
    context = span.get_span_context()
    return context if context.is_valid else None


def retry_links(headers: Mapping[str, Any] | None) -> list[trace.Link]:
    """``links=`` for the span of a retried attempt: one link to the attempt that
    raised ``Backoff`` when the copy carries its ``traceparent``, else none::

        with tracer.start_as_current_span("handle", links=retry_links(headers)):
            ...
    """
    context = retry_context(headers)
    return [] if context is None else [trace.Link(context)]
