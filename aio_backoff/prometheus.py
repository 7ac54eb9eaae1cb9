"""prometheus-client metrics for retries (the ``prometheus`` extra).

``Retrier(..., hooks=prometheus_hooks())`` registers, in ``registry`` (default: the
client's global one), the metrics of :data:`METRICS`: counters end in ``_total``,
durations are histograms in seconds (docs/observability.md has a dashboard's worth
of PromQL).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as missing:  # pragma: no cover - depends on the environment
    msg = (
        "aio_backoff.prometheus needs prometheus-client: "
        f"pip install 'aio-backoff[prometheus]' ({missing})"
    )
    raise ImportError(msg) from missing

from .core._events import Hooks
from .core._figures import FIGURES, Figure, Label, figure_hooks

__all__ = ["DELAY_BUCKETS", "LATENESS_BUCKETS", "METRICS", "prometheus_hooks"]

DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
"""Seconds: retry delays, from milliseconds to a day."""

LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Seconds: how late copies come back (the ladder adds up to a few ms per level)."""

_BUCKETS: Mapping[str, tuple[float, ...]] = {
    "delay": DELAY_BUCKETS,
    "lateness": LATENESS_BUCKETS,
}


def _exposed(figure: Figure) -> str:
    """A figure's name without the namespace, as Prometheus's conventions want it:
    a histogram of milliseconds is one of seconds (a counter gains ``_total`` from
    the client)."""
    return f"{figure.name}_seconds" if figure.kind == "histogram" else figure.name


METRICS: Mapping[str, str] = {
    f"aio_backoff_{_exposed(figure)}"
    + ("_total" if figure.kind == "counter" else ""): (
        f"{figure.kind}: {figure.description} {{{', '.join(figure.labels)}}}"
    )
    for figure in FIGURES
}
"""The metrics :func:`prometheus_hooks` registers, as exposed (with the default
namespace)."""


def prometheus_hooks(
    registry: CollectorRegistry | None = REGISTRY, *, namespace: str = "aio_backoff"
) -> Hooks:
    """Hooks that update :data:`METRICS` (names start with ``namespace``) in
    ``registry``. Call it once per registry: a second call registers the same
    names again, which prometheus-client refuses."""
    metrics: dict[str, Any] = {}
    for figure in FIGURES:
        common: dict[str, Any] = {"namespace": namespace, "registry": registry}
        if figure.kind == "counter":
            metric: Any = Counter(
                _exposed(figure), figure.description, figure.labels, **common
            )
        else:
            metric = Histogram(
                _exposed(figure),
                figure.description,
                figure.labels,
                buckets=_BUCKETS[figure.name],
                **common,
            )
        metrics[figure.name] = metric

    def record(figure: Figure, labels: dict[Label, Any], value: float) -> None:
        values = [_label_value(labels[label]) for label in figure.labels]
        metric = metrics[figure.name].labels(*values)
        if figure.kind == "counter":
            metric.inc(value)
        else:
            metric.observe(value / 1000)  # ms -> s

    return figure_hooks(record)


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
