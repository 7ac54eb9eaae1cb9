"""The figures a metrics back end keeps, and which event moves each one by how much.

One table for every back end (:mod:`aio_backoff.otel`, :mod:`aio_backoff.prometheus`):
each names its instruments after :data:`FIGURES` and spells the labels its own way
(OpenTelemetry's ``exception.type`` is Prometheus's ``exception``), then hands a
``record(figure, labels, value)`` to :func:`figure_hooks`, which returns the
:class:`~aio_backoff.core._events.Hooks` that call it. Nothing here talks to a broker
or imports a metrics library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._events import Hooks

__all__ = ["FIGURES", "Figure", "Label", "Record", "figure_hooks"]

Label = Literal["queue", "exception", "permanent"]
"""What a figure is split by: the queue the message was consumed from, the type of
the exception that asked for the retry, whether a copy not placed never will be."""

_LABEL_OF: Final[Mapping[Label, str]] = {
    "queue": "queue",
    "exception": "exception_type",
    "permanent": "permanent",
}
"""Label -> the event attribute it is read from."""


@dataclass(frozen=True)
class Figure:
    """A counter (moved by 1 per event) or a histogram of milliseconds."""

    name: str
    kind: Literal["counter", "histogram"]
    unit: str  # UCUM, as OpenTelemetry writes it: "{retry}", "ms"
    description: str
    event: str  # the hook that moves it: a field of Hooks
    labels: tuple[Label, ...]
    measured: str | None = None  # a histogram's event attribute, in ms

    def reading(self, event: Any) -> tuple[dict[Label, Any], float] | None:
        """The labels and the value ``event`` records, or ``None`` when it records
        nothing (a copy whose lateness is unknown)."""
        labels = {label: getattr(event, _LABEL_OF[label]) for label in self.labels}
        if self.measured is None:
            return labels, 1
        value = getattr(event, self.measured)
        if value is None:
            return None
        return labels, max(value, 0)  # clocks apart can make a lateness negative


FIGURES: Final[tuple[Figure, ...]] = (
    Figure(
        "retries", "counter", "{retry}", "Delayed copies placed", "scheduled",
        ("queue", "exception"),
    ),
    Figure(
        "expired", "counter", "{message}", "Messages whose retries were spent",
        "expired", ("queue", "exception"),
    ),
    Figure(
        "not_placed", "counter", "{copy}",
        "Delayed or parked copies the broker did not take", "not_placed",
        ("queue", "permanent"),
    ),
    Figure("parked", "counter", "{message}", "Messages parked", "parked", ("queue",)),
    Figure(
        "replayed", "counter", "{message}", "Copies delivered again by hand",
        "replayed", ("queue",),
    ),
    Figure(
        "delay", "histogram", "ms", "Delay of each copy placed", "scheduled",
        ("queue",), measured="delay_ms",
    ),
    Figure(
        "lateness", "histogram", "ms", "When a copy came back minus when it was due",
        "came_back", ("queue",), measured="lateness_ms",
    ),
)  # fmt: skip

Record = Callable[[Figure, dict[Label, Any], float], None]
"""A back end's ``record(figure, labels, value)``."""


def figure_hooks(record: Record) -> Hooks:
    """Hooks that call ``record`` for each figure an event moves."""
    by_event: dict[str, list[Figure]] = {}
    for figure in FIGURES:
        by_event.setdefault(figure.event, []).append(figure)

    def hook(figures: list[Figure]) -> Callable[[Any], None]:
        def on(event: Any) -> None:
            for figure in figures:
                reading = figure.reading(event)
                if reading is not None:
                    record(figure, *reading)

        return on

    return Hooks(**{event: hook(figures) for event, figures in by_event.items()})
