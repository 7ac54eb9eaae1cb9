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
from ..core._outcome import Outcome, Settle
from ._expiry import BUILT_IN_ACTIONS, ExpiredMessage, run_final_action
from ._policy import RetryPolicy
from ._publisher import CopyNotPlaced
from ._settle import keep, requeue

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

    @property
    def queue_arguments(self) -> dict[str, Any] | None:
        """The arguments of the queue the message came from, if known."""
        source = self._source
        return None if isinstance(source, str) else source.arguments

    async def __aenter__(self) -> AbstractIncomingMessage:
        publisher = self.retrier.publisher
        if not publisher.available:  # the gate: no handler while copies cannot go
            await publisher.wait_available()
        return self.message

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None:
            if not self.message.processed:
                await self.message.ack()
            self.retrier.failures.settled(self.message)
            return False
        if not isinstance(exc, Exception):
            # CancelledError, KeyboardInterrupt, ...: put it back and propagate
            await requeue(self.message, self.queue)
            log.info(
                "requeued message %r on queue %r: the handler was interrupted (%r)",
                self.message.message_id,
                self.queue,
                exc,
            )
            return False
        backoff = self.policy.backoff_for(exc)
        if backoff is None:
            await self._reject(exc)
            return False
        await self._retry(backoff)
        return True

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

    async def _retry(self, backoff: Backoff) -> None:
        publisher = self.retrier.publisher
        try:
            plan = publisher.plan(self.message, backoff, target_queue=self.queue)
        except Backoff.Expired as expired:
            await self._expire(expired)
            raise
        except Exception as error:
            await self._failed(Outcome.PLANNING_ERROR, f"planning error: {error}")
            if isinstance(error, BackoffConfigError):
                raise
            raise BackoffConfigError(str(error)) from error
        try:
            await publisher.publish_copy(self.message, plan)
        except CopyNotPlaced as failure:
            await self._failed(failure.outcome, str(failure))
            raise
        if not self.message.processed:
            await self.message.ack()
        self.retrier.failures.settled(self.message)
        log.info(
            "message %r from queue %r: retry #%r (limit %r) in %r ms",
            self.message.message_id,
            self.queue,
            plan.retry_number,
            plan.limit,
            plan.delay_ms,
        )

    async def _failed(self, outcome: Outcome, reason: str) -> None:
        """Carry out the table's action for a failure of ours (not the handler's)."""
        failures = self.retrier.failures
        action, tries, pause = failures.decide(self.message, outcome)
        if action.settle is Settle.REQUEUE_LATER:
            log.log(
                action.level,
                "message %r from queue %r goes back to its queue in %.2f s (%s, "
                "try %r of %r): %s",
                self.message.message_id,
                self.queue,
                pause,
                outcome,
                tries,
                failures.policy.max_transient_tries or "unlimited",
                reason,
            )
            try:
                await failures.pause(pause)
            finally:  # also when cancelled: back on its queue now
                await requeue(self.message, self.queue)
            return
        try:
            done = await keep(
                self.message,
                queue=self.queue,
                queue_arguments=self.queue_arguments,
                publisher=self.retrier.publisher,
                reason=reason,
            )
        except Exception as error:
            if outcome is Outcome.FINAL_ACTION_FAILED:
                raise
            log.log(
                action.level,
                "message %r from queue %r: %s; keeping it failed: %s",
                self.message.message_id,
                self.queue,
                reason,
                error,
            )
            await self._failed(Outcome.FINAL_ACTION_FAILED, str(error))
            return
        failures.settled(self.message)
        log.log(
            action.level,
            "message %r from queue %r %s (%s): %s",
            self.message.message_id,
            self.queue,
            done,
            outcome,
            reason,
        )

    async def _expire(self, error: Backoff.Expired) -> None:
        expired = ExpiredMessage(
            message=self.message,
            queue=self.queue,
            queue_arguments=self.queue_arguments,
            error=error,
            publisher=self.retrier.publisher,
        )
        action = self.policy.on_expired
        if action not in BUILT_IN_ACTIONS:  # the built-in ones log what they did
            log.warning(
                "message %r from queue %r expired after %r retries (limit %r); "
                "calling on_expired %r",
                self.message.message_id,
                self.queue,
                error.retries,
                error.limit,
                action,
            )
        try:
            await run_final_action(action, expired)
        except Exception as failure:
            await self._failed(
                Outcome.FINAL_ACTION_FAILED, f"its final action failed: {failure!r}"
            )
            raise
        except BaseException:
            await requeue(self.message, self.queue)
            raise
        if not self.message.processed:
            await self.message.ack()
        self.retrier.failures.settled(self.message)
