"""prometheus-client metrics for retries (the ``prometheus`` extra).

``Retrier(..., hooks=prometheus_hooks())`` registers, in ``registry`` (default: the
client's global one), the metrics of :data:`METRICS`: counters end in ``_total``,
durations are histograms in seconds (docs/observability.md has a dashboard's worth
of PromQL).
"""

from __future__ import annotations

from collections.abc import Mapping

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as missing:  # pragma: no cover - depends on the environment
    msg = (
        "aio_backoff.prometheus needs prometheus-client: "
        f"pip install 'aio-backoff[prometheus]' ({missing})"
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

__all__ = ["DELAY_BUCKETS", "LATENESS_BUCKETS", "METRICS", "prometheus_hooks"]

METRICS: Mapping[str, str] = {
    "aio_backoff_retries_total": "counter: copies placed {queue, exception}",
    "aio_backoff_expired_total": "counter: retries spent {queue, exception}",
    "aio_backoff_not_placed_total": "counter: copies not placed {queue, permanent}",
    "aio_backoff_parked_total": "counter: messages parked {queue}",
    "aio_backoff_replayed_total": "counter: copies replayed {queue}",
    "aio_backoff_delay_seconds": "histogram: delay of each copy placed {queue}",
    "aio_backoff_lateness_seconds": "histogram: came back minus due {queue}",
}
"""The metrics :func:`prometheus_hooks` registers, as exposed."""

DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
"""Seconds: retry delays, from milliseconds to a day."""

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Seconds: how late copies come back (the ladder adds up to a few ms per level)."""


def prometheus_hooks(
    registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "aio_backoff"
) -> Hooks:
    """Hooks that update :data:`METRICS` (names start with ``namespace``) in
    ``registry``. Call it once per registry: a second call registers the same
    names again, which prometheus-client refuses."""
    retries = Counter(
        "retries",
        "Delayed copies placed",
        ["queue", "exception"],
        namespace=namespace,
        registry=registry,
    )
    expired = Counter(
        "expired",
        "Messages whose retries were spent",
        ["queue", "exception"],
        namespace=namespace,
        registry=registry,
    )
    not_placed = Counter(
        "not_placed",
        "Delayed or parked copies the broker did not take",
        ["queue", "permanent"],
        namespace=namespace,
        registry=registry,
    )
    parked = Counter(
        "parked", "Messages parked", ["queue"], namespace=namespace, registry=registry
    )
    replayed = Counter(
        "replayed",
        "Copies delivered again by hand",
        ["queue"],
        namespace=namespace,
        registry=registry,
    )
    delay = Histogram(
        "delay_seconds",
        "Delay of each copy placed",
        ["queue"],
        namespace=namespace,
        registry=registry,
        buckets=DELAY_BUCKETS,
    )
    lateness = Histogram(
        "lateness_seconds",
        "When a copy came back minus when it was due",
        ["queue"],
        namespace=namespace,
        registry=registry,
        buckets=LATENESS_BUCKETS,
    )

    def on_scheduled(event: Scheduled) -> None:
        retries.labels(event.queue, event.exception_type).inc()
        delay.labels(event.queue).observe(event.delay_ms / 1000)

    def on_came_back(event: CameBack) -> None:
        if event.lateness_ms is not None:  # clocks apart can make it negative
            lateness.labels(event.queue).observe(max(event.lateness_ms, 0) / 1000)

    def on_expired(event: Expired) -> None:
        expired.labels(event.queue, event.exception_type).inc()

    def on_not_placed(event: NotPlaced) -> None:
        not_placed.labels(event.queue, "true" if event.permanent else "false").inc()

    def on_parked(event: Parked) -> None:
        parked.labels(event.queue).inc()

    def on_replayed(event: Replayed) -> None:
        replayed.labels(event.queue).inc()

    return Hooks(
        scheduled=on_scheduled,
        came_back=on_came_back,
        expired=on_expired,
        not_placed=on_not_placed,
        parked=on_parked,
        replayed=on_replayed,
    )
