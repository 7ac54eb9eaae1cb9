"""A hook that records the events it is told about, for the observability tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aio_backoff import Hooks


@dataclass
class Events:
    """Every event, in order; ``of(kind)`` those of one class."""

    seen: list[Any] = field(default_factory=list)

    def __call__(self, event: Any) -> None:
        self.seen.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.seen if isinstance(event, kind)]

    def hooks(self) -> Hooks:
        return Hooks(every=self)


def failing(event: Any) -> None:
    """A hook that always raises."""
    msg = f"this hook fails on {event!r}"
    raise RuntimeError(msg)
