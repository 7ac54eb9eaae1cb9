"""The W3C trace context across the delay: ``traceparent`` on a delayed copy.

When OpenTelemetry is installed and a span is current while a copy is placed, the
copy carries that span's ``traceparent`` (and ``tracestate``), so the attempt that
comes back can link to the one that raised ``Backoff``
(:func:`aio_backoff.otel.retry_links`). Without OpenTelemetry, or without a current
span, the headers are left as they are. Both stacks call :func:`add_traceparent` on
every delayed copy: ``aio_backoff``'s ``DelayedPublisher.publish_copy`` and
``nameko_bridge``'s ``BackoffPublisher.publish_copy``. Nothing here talks to a broker.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Final

__all__ = ["TRACEPARENT_HEADER", "TRACESTATE_HEADER", "add_traceparent"]

TRACEPARENT_HEADER: Final = "traceparent"
TRACESTATE_HEADER: Final = "tracestate"

_inject: Callable[[MutableMapping[str, Any]], None] | None = None
_loaded = False


def _load() -> Callable[[MutableMapping[str, Any]], None] | None:
    global _inject, _loaded  # noqa: PLW0603 - imported once, on first use
    _loaded = True
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional, on first use
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )
    except ImportError:
        return None
    propagator = TraceContextTextMapPropagator()

    def inject(headers: MutableMapping[str, Any]) -> None:
        if trace.get_current_span().get_span_context().is_valid:
            # a tracestate belongs to its traceparent: the message's own must not
            # stay next to the current span's traceparent (the propagator writes
            # tracestate only when the span has one)
            headers.pop(TRACESTATE_HEADER, None)
            propagator.inject(headers)

    _inject = inject
    return inject


def add_traceparent(headers: MutableMapping[str, Any]) -> None:
    """Put the current span's ``traceparent`` (and ``tracestate``) in ``headers``.

    With a current span, they replace the ones ``headers`` had (a ``tracestate``
    the span does not have is removed); without one, or without OpenTelemetry,
    ``headers`` are left as they are, so a copy keeps the message's own.
    """
    inject = _inject if _loaded else _load()
    if inject is not None:
        inject(headers)
