"""The figures table both metrics back ends build on (aio_backoff/core/_figures.py)."""

from __future__ import annotations

from typing import Any

from aio_backoff.core._events import Hooks
from aio_backoff.core._figures import FIGURES, Figure, figure_hooks
from aio_backoff.events import CameBack, NotPlaced, Scheduled


def recorded(event_kind: str, event: Any) -> list[tuple[str, dict[str, Any], float]]:
    seen: list[tuple[str, dict[str, Any], float]] = []

    def record(figure: Figure, labels: dict[str, Any], value: float) -> None:
        seen.append((figure.name, labels, value))

    hooks = figure_hooks(record)
    for hook in getattr(hooks, event_kind):
        hook(event)
    return seen


def test_every_figure_is_moved_by_a_hook_and_labelled_by_its_event() -> None:
    assert {figure.event for figure in FIGURES} <= set(Hooks.__slots__)
    assert len({figure.name for figure in FIGURES}) == len(FIGURES)


def test_a_copy_placed_counts_a_retry_and_records_its_delay() -> None:
    event = Scheduled("orders", "m", 2, 5, 1500, "Busy")
    assert recorded("scheduled", event) == [
        ("retries", {"queue": "orders", "exception": "Busy"}, 1),
        ("delay", {"queue": "orders"}, 1500),
    ]


def test_a_lateness_below_zero_is_zero_and_an_unknown_one_is_not_recorded() -> None:
    early = CameBack("orders", "m", 1, 100, -7)
    unknown = CameBack("orders", "m", 1, None, None)
    assert recorded("came_back", early) == [("lateness", {"queue": "orders"}, 0)]
    assert recorded("came_back", unknown) == []


def test_a_copy_not_placed_is_labelled_permanent_or_not() -> None:
    event = NotPlaced("orders", "m", 1, 3, 100, permanent=True, reason="gone")
    assert recorded("not_placed", event) == [
        ("not_placed", {"queue": "orders", "permanent": True}, 1)
    ]
