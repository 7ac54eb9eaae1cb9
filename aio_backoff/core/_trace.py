"""The W3C trace context across the delay: ``traceparent`` on a delayed copy.

When OpenTelemetry is installed and a span is current while a copy is placed, the
copy carries that span's ``traceparent`` (and ``tracestate``), so the attempt that
comes back can link to the one that raised ``Backoff``
(:func:`aio_backoff.otel.retry_links`). Without OpenTelemetry this does nothing.
Nothing here talks to a broker.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Final

__all__ = ["TRACEPARENT_HEADER", "add_traceparent"]

TRACEPARENT_HEADER: Final = "traceparent"

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
            propagator.inject(headers)

    _inject = inject
    return inject


def add_traceparent(headers: MutableMapping[str, Any]) -> None:
    """Put the current span's ``traceparent`` in ``headers``, if there is one."""
    inject = _inject if _loaded else _load()
    if inject is not None:
        inject(headers)
