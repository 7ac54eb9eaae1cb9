"""What the middleware needs to know of a FastStream subscriber, in one place.

FastStream 0.6 and 0.7 agree on these (``handler_`` in the context, a subscriber's
``ack_policy`` and ``queue``, the broker's prefix in its ``_outer_config``, the
aio-pika queue it consumes in ``_queue_obj``); a version that moves them needs
changes here only.
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractQueue
from faststream.middlewares import AckPolicy

from ..core._backoff import BackoffConfigError

__all__ = [
    "check_ack_policy",
    "consumed_queue",
    "current_subscriber",
    "is_exclusive",
    "queue_name",
]


def current_subscriber(context: Any) -> Any:
    """The subscriber whose handler the message is for (FastStream's ``handler_``)."""
    return context.get_local("handler_")


def queue_name(subscriber: Any) -> str:
    """The name of the queue ``subscriber`` consumes, with the broker's prefix."""
    queue = getattr(subscriber, "queue", None)
    name = getattr(queue, "name", None)
    if not name:
        msg = (
            f"cannot retry messages of {subscriber!r}: it is not a RabbitMQ "
            "subscriber with a named queue (copies come back to a queue by name)"
        )
        raise BackoffConfigError(msg)
    prefix = getattr(getattr(subscriber, "_outer_config", None), "prefix", "") or ""
    return f"{prefix}{name}"


def consumed_queue(subscriber: Any) -> AbstractQueue | str:
    """The aio-pika queue ``subscriber`` consumes (its declare arguments show the
    final action a dead-letter exchange), or its name while it has none."""
    queue = getattr(subscriber, "_queue_obj", None)
    if isinstance(queue, AbstractQueue) and queue.name == queue_name(subscriber):
        return queue
    return queue_name(subscriber)


def is_exclusive(subscriber: Any) -> bool:
    """Whether ``subscriber``'s queue is exclusive to the broker's connection."""
    return bool(getattr(getattr(subscriber, "queue", None), "exclusive", False))


def check_ack_policy(subscriber: Any) -> None:
    """``BackoffConfigError`` when ``subscriber``'s messages are acked before its
    handler runs (``AckPolicy.ACK_FIRST``: FastStream consumes it with ``no_ack``);
    a retry needs the original unsettled until its copy is placed."""
    if getattr(subscriber, "ack_policy", None) is AckPolicy.ACK_FIRST:
        msg = (
            f"cannot retry messages from queue {queue_name(subscriber)!r}: its "
            "subscriber uses AckPolicy.ACK_FIRST, so each message is acked before "
            "the handler runs and a failed one would be lost; use "
            "ack_policy=AckPolicy.REJECT_ON_ERROR (the default), NACK_ON_ERROR, ACK "
            "or MANUAL on this subscriber"
        )
        raise BackoffConfigError(msg)
