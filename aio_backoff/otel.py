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

from .core._events import Hooks
from .core._figures import FIGURES, Figure, Label, figure_hooks

__all__ = ["INSTRUMENTS", "otel_hooks", "retry_context", "retry_links"]

ATTRIBUTES: Mapping[Label, str] = {
    "queue": "queue",
    "exception": "exception.type",
    "permanent": "permanent",
}
"""The attribute each label is recorded as (OpenTelemetry's ``exception.type``)."""

INSTRUMENTS: Mapping[str, str] = {
    f"aio_backoff.{figure.name}": (
        f"{figure.kind} {figure.unit}: {figure.description}; "
        + ", ".join(ATTRIBUTES[label] for label in figure.labels)
    )
    for figure in FIGURES
}
"""The instruments :func:`otel_hooks` creates: name -> kind, unit, description and
attributes."""

_PROPAGATOR = TraceContextTextMapPropagator()


def otel_hooks(meter_provider: metrics.MeterProvider | None = None) -> Hooks:
    """Hooks that record :data:`INSTRUMENTS` with ``meter_provider`` (default: the
    global one)."""
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter("aio_backoff")
    instruments: dict[str, Any] = {}
    for figure in FIGURES:
        create = (
            meter.create_counter if figure.kind == "counter" else meter.create_histogram
        )
        instruments[figure.name] = create(
            f"aio_backoff.{figure.name}",
            unit=figure.unit,
            description=figure.description,
        )

    def record(figure: Figure, labels: dict[Label, Any], value: float) -> None:
        attributes = {ATTRIBUTES[label]: labels[label] for label in labels}
        instrument = instruments[figure.name]
        if figure.kind == "counter":
            instrument.add(value, attributes)
        else:
            instrument.record(value, attributes)

    return figure_hooks(record)


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
