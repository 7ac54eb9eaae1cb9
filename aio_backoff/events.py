"""The events hooks receive (see :class:`aio_backoff.Hooks` and docs/observability.md).

The same on every stack; built only when a hook listens for them.
"""

from .core._events import (
    NO_HOOKS,
    CameBack,
    Event,
    Expired,
    Hook,
    Hooks,
    NotPlaced,
    Parked,
    Replayed,
    Scheduled,
    came_back,
    emit,
    tell_replayed,
)

__all__ = [
    "NO_HOOKS",
    "CameBack",
    "Event",
    "Expired",
    "Hook",
    "Hooks",
    "NotPlaced",
    "Parked",
    "Replayed",
    "Scheduled",
    "came_back",
    "emit",
    "tell_replayed",
]
