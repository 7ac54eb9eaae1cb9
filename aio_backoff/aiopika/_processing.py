"""``retrier.process(message)``: run a handler and settle its message by the ack table.

:class:`Processing` (what ``Retrier.process`` returns) carries out
:func:`aio_backoff.decide` (docs/reliability.md):

============================  ==========================================================
handler outcome               message
============================  ==========================================================
returns                       ack
raises ``Backoff`` (or a      delayed copy published (mandatory + confirm), *then* the
``retry_for`` exception)      original is acked
... copy not placed,          back on its queue after a growing pause; at the
transient                     ``FailurePolicy``'s try limit, dead-lettered or parked
... copy not placed,          dead-lettered or parked at once, the reason in
permanent                     ``backoff-error``; one ERROR line
... planning error            as a permanent failure (``BackoffConfigError``)
... limit spent               the final action (``on_expired``, default
                              :func:`~aio_backoff.dead_letter_or_park`), then
                              ``Backoff.Expired`` is raised out of ``process()``
... final action failed       back on its queue after a growing pause
raises anything else          ``reject(requeue=requeue_on_error)`` (default: no requeue)
cancelled (``CancelledError``)  ``nack(requeue=True)``, and the cancellation propagates
============================  ==========================================================

A message the handler already settled itself is not settled again. While the
publisher cannot publish at all, no new handler starts (the gate).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from ..core._backoff import Backoff, BackoffConfigError
from ..core._events import came_back, emit, retry_fields
from ..core._outcome import Outcome
from ._failures import CopyNotPlaced, failure_outcome
from ._policy import RetryPolicy
from ._settle import Delivery

if TYPE_CHECKING:
    from ._retrier import Retrier

__all__ = ["Processing", "name_of"]

log = logging.getLogger("aio_backoff").getChild("consumer")


def name_of(queue: AbstractQueue | str) -> str:
    name = queue if isinstance(queue, str) else queue.name
    if not name:
        msg = (
            "a retrying consumer needs the name of the queue its messages come "
            f"back to, got {queue!r}"
        )
        raise ValueError(msg)
    return name


class Processing:
    """The ``async with retrier.process(message, queue=...)`` context."""

    __slots__ = ("_source", "message", "policy", "queue", "retrier")

    def __init__(
        self,
        retrier: Retrier,
        message: AbstractIncomingMessage,
        queue: AbstractQueue | str,
        policy: RetryPolicy,
        queue_name: str | None = None,
    ) -> None:
        """``queue_name`` is ``name_of(queue)`` when the caller has it already."""
        self.retrier = retrier
        self.message = message
        self.queue = name_of(queue) if queue_name is None else queue_name
        self._source = queue
        self.policy = policy
        hooks = retrier.publisher.hooks.came_back
        if hooks:
            event = came_back(
                message.headers, queue=self.queue, message_id=message.message_id
            )
            if event is not None:
                emit(hooks, event)

    @property
    def queue_arguments(self) -> dict[str, Any] | None:
        """The arguments of the queue the message came from, if known."""
        source = self._source
        return None if isinstance(source, str) else source.arguments

    async def __aenter__(self) -> AbstractIncomingMessage:
        await self.gate()
        return self.message

    async def gate(self) -> None:
        """Return once the publisher can place copies: no handler starts before."""
        publisher = self.retrier.publisher
        if not publisher.available:
            await publisher.wait_available()

    def delivery(self) -> Delivery:
        """The message as :class:`~._settle.Settling` carries out its outcomes."""
        return Delivery(
            message=self.message,
            queue=self.queue,
            subject=f"message {self.message.message_id!r} from queue {self.queue!r}",
            queue_arguments=self.queue_arguments,
            on_expired=self.policy.on_expired,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None:
            if not self.message.processed:
                await self.message.ack()
            self.retrier.settling.settled(self.message, self.queue)
            return False
        if not isinstance(exc, Exception):
            # CancelledError, KeyboardInterrupt, ...: put it back and propagate
            await self._carry_out(
                Outcome.CANCELLED, f"the handler was interrupted ({exc!r})"
            )
            return False
        backoff = self.policy.backoff_for(exc)
        if backoff is None:
            await self._reject(exc)
            return False
        await self.retry(backoff)
        return True

    async def _carry_out(
        self, outcome: Outcome, happened: str, error: BaseException | None = None
    ) -> None:
        settling = self.retrier.settling
        delivery = self.delivery()
        decision = settling.decide(delivery, outcome)
        await settling.carry_out(delivery, decision, happened=happened, error=error)

    async def _reject(self, error: Exception) -> None:
        requeue_on_error = self.policy.requeue_on_error
        if not self.message.processed:
            await self.message.reject(requeue=requeue_on_error)
        log.info(
            "message %r from queue %r %s after %s: %s",
            self.message.message_id,
            self.queue,
            "requeued" if requeue_on_error else "rejected",
            type(error).__name__,
            error,
        )

    async def retry(self, backoff: Backoff) -> None:
        """Settle the message by the table's ``Backoff`` rows: place the copy, then
        ack; on expiry the final action, then ``Backoff.Expired`` is raised; a copy
        not placed or a planning error settles as the table says and raises
        (``CopyNotPlaced``, ``BackoffConfigError``). For executors that run the
        handler themselves (the FastStream middleware)."""
        publisher = self.retrier.publisher
        try:
            plan = publisher.plan(self.message, backoff, target_queue=self.queue)
        except Backoff.Expired as expired:
            await self._carry_out(Outcome.EXPIRED, str(expired), expired)
            raise
        except Exception as error:
            await self._carry_out(Outcome.PLANNING_ERROR, f"planning error: {error}")
            if isinstance(error, BackoffConfigError):
                raise
            raise BackoffConfigError(str(error)) from error
        try:
            await publisher.publish_copy(self.message, plan)
        except CopyNotPlaced as failure:
            await self._carry_out(failure_outcome(failure), str(failure))
            raise
        if not self.message.processed:
            await self.message.ack()
        self.retrier.settling.settled(self.message, self.queue)
        if not log.isEnabledFor(logging.INFO):
            return  # the line's structured fields are not worth building
        log.info(
            "message %r from queue %r: retry #%r (limit %r) in %r ms",
            self.message.message_id,
            self.queue,
            plan.retry_number,
            plan.limit,
            plan.delay_ms,
            extra=retry_fields(
                self.queue,
                self.message.message_id,
                plan.retry_number,
                plan.limit,
                plan.delay_ms,
                outcome="retry placed",
            ),
        )
