"""What happens to a message whose retries are spent: the final actions on expiry.

A final action is an ``async`` callable taking an :class:`ExpiredMessage`. The
built-in ones settle the message; a user callback may settle it too (if it does
not, the consumer acks it once the callback returns). The default,
:func:`dead_letter_or_park`, keeps the message where a person can inspect it and
never drops it silently.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from aio_pika.abc import AbstractIncomingMessage

from ..core._backoff import Backoff
from ._publisher import DelayedPublisher

__all__ = [
    "ExpiredMessage",
    "ExpiryAction",
    "dead_letter",
    "dead_letter_or_park",
    "drop",
    "park",
]

log = logging.getLogger("aio_backoff").getChild("expiry")

DEAD_LETTER_EXCHANGE_ARGUMENT = "x-dead-letter-exchange"


@dataclass(frozen=True)
class ExpiredMessage:
    """A message that used all its retries, and what a final action needs."""

    message: AbstractIncomingMessage
    queue: str
    """The queue the message was consumed from."""
    queue_arguments: Mapping[str, Any] | None
    """That queue's declare arguments, when the consumer was given the
    ``AbstractQueue`` (``None`` when it was given only a name)."""
    error: Backoff.Expired
    """The ``Backoff.Expired`` error (chained from the last ``Backoff``)."""
    publisher: DelayedPublisher
    """The consumer's publisher, for actions that publish (such as :func:`park`)."""

    @property
    def has_dead_letter_exchange(self) -> bool:
        """Whether the queue was declared with ``x-dead-letter-exchange``."""
        return DEAD_LETTER_EXCHANGE_ARGUMENT in (self.queue_arguments or {})


ExpiryAction: TypeAlias = Callable[[ExpiredMessage], Awaitable[Any]]
"""``async def action(expired: ExpiredMessage) -> None``."""


async def dead_letter(expired: ExpiredMessage) -> None:
    """Reject without requeue, so the queue's dead-letter exchange takes the message.

    When the queue's declare arguments name a dead-letter exchange (or, for the
    default exchange, a dead-letter queue) that does not exist, the message is
    parked instead (:func:`park`). A dead-letter exchange set by a policy cannot be
    checked: without one the broker drops the message.
    """
    missing = await expired.publisher.dead_letter_target_missing(
        expired.queue_arguments
    )
    if missing is not None:
        log.warning(
            "message %r from queue %r expired, and %s: parking it instead",
            expired.message.message_id,
            expired.queue,
            missing,
        )
        await park(expired)
        return
    await expired.message.reject(requeue=False)
    log.warning(
        "message %r from queue %r expired (%s); dead-lettered through the queue's "
        "dead-letter exchange %r",
        expired.message.message_id,
        expired.queue,
        expired.error,
        (expired.queue_arguments or {}).get(DEAD_LETTER_EXCHANGE_ARGUMENT),
    )


async def park(expired: ExpiredMessage) -> None:
    """Publish the message to ``{queue}.parked`` with the error in headers, then ack.

    The parking queue is durable; the copy keeps body and properties and gains
    ``backoff-error`` and ``backoff-queue`` headers. Raises
    :class:`~aio_backoff.CopyNotPlaced` (message unsettled) if the broker does not
    take the copy.
    """
    parking = await expired.publisher.park(
        expired.message, queue=expired.queue, error=expired.error
    )
    await expired.message.ack()
    log.warning(
        "message %r from queue %r expired (%s); parked in %r",
        expired.message.message_id,
        expired.queue,
        expired.error,
        parking,
    )


async def drop(expired: ExpiredMessage) -> None:
    """Ack the message: it is gone. Only for messages nobody needs to see again."""
    await expired.message.ack()
    log.warning(
        "message %r from queue %r expired (%s); dropped",
        expired.message.message_id,
        expired.queue,
        expired.error,
    )


async def dead_letter_or_park(expired: ExpiredMessage) -> None:
    """The default: :func:`dead_letter` if the queue has a DLX, else :func:`park`.

    Only a dead-letter exchange given in the queue's declare arguments is seen
    (the consumer must be given the ``AbstractQueue``); for one set by a policy,
    use ``on_expired=dead_letter``.
    """
    if expired.has_dead_letter_exchange:
        await dead_letter(expired)
    else:
        await park(expired)


BUILT_IN_ACTIONS: frozenset[ExpiryAction] = frozenset(
    {dead_letter, park, drop, dead_letter_or_park}
)


async def run_final_action(action: ExpiryAction, expired: ExpiredMessage) -> None:
    """Run ``action`` on ``expired``; a failed user callback falls back to the default.

    When a callback that is not one of the built-in actions raises an ``Exception``
    before settling the message, the failure is logged and
    :func:`dead_letter_or_park` runs instead, so the message is still kept. Any other
    failure (a built-in action's, the fallback's, a ``BaseException``, or one after
    the message was settled) propagates: the caller puts the message back.
    """
    try:
        await action(expired)
    except Exception:
        if expired.message.processed or action in BUILT_IN_ACTIONS:
            raise
        log.exception(
            "on_expired action %r failed for message %r from queue %r; "
            "falling back to dead_letter_or_park",
            action,
            expired.message.message_id,
            expired.queue,
        )
        await dead_letter_or_park(expired)
