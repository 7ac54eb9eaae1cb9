"""Carrying out the ack table's actions that need more than one call.

*Keep* (dead-letter or park, with the reason) and *requeue after a pause* (with the
per-message count of transient failures) are the same for ``Retrier`` and
``BackoffRPC``; the table itself is :func:`aio_backoff.decide`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Hashable, Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..core._outcome import Action, FailurePolicy, Outcome, TransientTries, decide
from ._parking import DEAD_LETTER_EXCHANGE
from ._publisher import DelayedPublisher

__all__ = ["TransientFailures", "keep", "message_key", "requeue"]

log = logging.getLogger("aio_backoff").getChild("consumer")


def message_key(message: AbstractIncomingMessage) -> Hashable:
    """What identifies a message across its redeliveries: its id, else a digest."""
    if message.message_id:
        return message.message_id
    digest = hashlib.blake2b(message.body, digest_size=16)
    digest.update(repr(message.correlation_id).encode())
    return digest.digest()


async def requeue(message: AbstractIncomingMessage, queue: str) -> None:
    """``nack(requeue=True)``, best effort: if the channel is gone, the broker
    requeues the message when it notices."""
    if message.processed:
        return
    try:
        await message.nack(requeue=True)
    except Exception:  # noqa: BLE001 - logged; the broker redelivers it anyway
        log.warning(
            "could not requeue message %r on queue %r; the broker redelivers it when "
            "the channel closes",
            message.message_id,
            queue,
        )


async def keep(
    message: AbstractIncomingMessage,
    *,
    queue: str,
    queue_arguments: Mapping[str, Any] | None,
    publisher: DelayedPublisher,
    reason: str,
) -> str:
    """Dead-letter or park ``message`` (with ``reason``); return what was done.

    Dead-letters (``reject(requeue=False)``) when the queue's declare arguments
    name a dead-letter exchange that exists; otherwise parks it in
    ``{queue}.parked`` with ``reason`` in ``backoff-error``, then acks it. Raises
    ``CopyNotPlaced`` (message unsettled) when the parked copy is not taken.
    """
    missing = None
    if queue_arguments and DEAD_LETTER_EXCHANGE in queue_arguments:
        missing = await publisher.dead_letter_target_missing(queue_arguments)
        if missing is None:
            await message.reject(requeue=False)
            return (
                f"dead-lettered through exchange "
                f"{queue_arguments[DEAD_LETTER_EXCHANGE]!r}"
            )
    parking = await publisher.park(message, queue=queue, error=reason)
    if not message.processed:
        await message.ack()
    if missing is not None:
        return f"parked in {parking!r}, because {missing}"
    return f"parked in {parking!r}"


class TransientFailures:
    """Counts a message's failures in a row and decides by the table.

    ``decide(message, outcome)`` returns the action and, for a requeue after a
    pause, how long to pause (``FailurePolicy.pause`` of the count).
    """

    def __init__(self, policy: FailurePolicy | None = None) -> None:
        self.policy = FailurePolicy() if policy is None else policy
        self.tries = TransientTries()

    def decide(
        self, message: AbstractIncomingMessage, outcome: Outcome
    ) -> tuple[Action, int, float]:
        """``(action, tries, pause_s)`` for this failure of ``message``."""
        key = message_key(message)
        tries = self.tries.failed(key)
        action = decide(outcome, transient_tries=tries, policy=self.policy)
        return action, tries, self.policy.pause(tries)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """``message`` was settled for good: forget its failures."""
        if len(self.tries):
            self.tries.clear(message_key(message))

    @staticmethod
    async def pause(seconds: float) -> None:
        await asyncio.sleep(seconds)
