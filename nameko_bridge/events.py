"""nameko's ``@event_handler`` entrypoint, retried with ``Backoff``.

A delayed copy comes back to this handler's own queue, so other services handling
the same event are not affected.
"""

from __future__ import annotations

from nameko.events import EventHandler as NamekoEventHandler

from .messaging import Consumer

__all__ = ["EventHandler", "event_handler"]


class EventHandler(NamekoEventHandler, Consumer):  # type: ignore[misc]
    """nameko's ``EventHandler`` with the retrying ``handle_result`` of
    :class:`nameko_bridge.messaging.Consumer` (and its ``on_expired`` option)."""


event_handler = EventHandler.decorator
