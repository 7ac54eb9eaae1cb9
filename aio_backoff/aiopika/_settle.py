"""Carrying out the ack table on aio-pika, once for every asyncio executor.

``Retrier`` (through its ``process()`` context), ``BackoffRPC`` and ``NamekoService``
sort what happened to a message into an :class:`~aio_backoff.core.Outcome`; a
:class:`Settling` asks :func:`aio_backoff.decide` for the action (counting a
message's transient failures in a row, keyed by :func:`message_key`) and carries
out what is the same on every stack:

- *keep* (:func:`keep`): dead-letter when the queue's dead-letter exchange exists
  (a passive check), else park in ``{queue}.parked`` with the reason;
- *requeue after a pause* (:meth:`FailurePolicy.pause
  <aio_backoff.core.FailurePolicy.pause>`), a pause that :meth:`Settling.stop_pausing`
  cuts short; *requeue now*;
- *the final action* (``on_expired``), falling back to a requeue after a pause when
  it fails;
- the one log line per decision, at the table's level.

What each stack does on its own is left to it: its reply to an RPC caller, its rule
for handler errors, the ack and log line of a placed retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..core._backoff import Backoff
from ..core._events import retry_fields
from ..core._outcome import Action, FailurePolicy, Outcome, Settle, TransientTries
from ..core._outcome import decide as decide_action
from ..core._protocol import retries_done
from ._expiry import (
    BUILT_IN_ACTIONS,
    ExpiredMessage,
    ExpiryAction,
    dead_letter_or_park,
    run_final_action,
)
from ._parking import DEAD_LETTER_EXCHANGE
from ._publisher import DelayedPublisher

__all__ = [
    "Decision",
    "Delivery",
    "Settling",
    "keep",
    "message_key",
    "requeue",
    "settle",
]

log = logging.getLogger("aio_backoff").getChild("consumer")

COUNTED = frozenset({Outcome.NOT_PLACED_TRANSIENT, Outcome.FINAL_ACTION_FAILED})
"""Outcomes that bring a message back: counted per message until it is settled."""


def message_key(message: AbstractIncomingMessage, queue: str) -> Hashable:
    """What identifies a message on ``queue`` across its redeliveries: its id, else
    a digest of its body and correlation id."""
    if message.message_id:
        return (queue, message.message_id)
    digest = hashlib.blake2b(message.body, digest_size=16)
    digest.update(repr((queue, message.correlation_id)).encode(errors="replace"))
    return digest.digest()


async def settle(
    message: AbstractIncomingMessage,
    *,
    queue: str,
    requeue: bool | None = None,
    logger: logging.Logger = log,
) -> None:
    """Ack (``requeue`` None) or ``nack(requeue=requeue)``, best effort.

    A message settled already is left alone; one that cannot be settled (its
    channel is gone) is logged: the broker redelivers it when it notices.
    """
    if message.processed:
        return
    try:
        if requeue is None:
            await message.ack()
        else:
            await message.nack(requeue=requeue)
    except Exception as error:  # noqa: BLE001 - logged; the broker redelivers it
        logger.warning(
            "could not %s message %r from queue %r (%r); the broker redelivers it "
            "when the channel closes",
            "requeue" if requeue else "settle",
            message.message_id,
            queue,
            error,
        )


async def requeue(
    message: AbstractIncomingMessage, queue: str, *, logger: logging.Logger = log
) -> None:
    """``nack(requeue=True)``, best effort (see :func:`settle`)."""
    await settle(message, queue=queue, requeue=True, logger=logger)


async def keep(
    message: AbstractIncomingMessage,
    *,
    queue: str,
    queue_arguments: Mapping[str, Any] | None,
    publisher: DelayedPublisher,
    reason: str,
    before_settle: Callable[[], Awaitable[object]] | None = None,
) -> str:
    """Dead-letter or park ``message`` (with ``reason``); return what was done.

    Dead-letters (``reject(requeue=False)``) when the queue's declare arguments
    name a dead-letter exchange that exists; otherwise parks it in
    ``{queue}.parked`` with ``reason`` in ``backoff-error``, then acks it. Raises
    ``CopyNotPlaced`` (message unsettled) when the parked copy is not taken.
    ``before_settle`` runs once the message is sure to be kept, before it is
    settled (an RPC reply that must not come before the parked copy).
    """
    missing = None
    if queue_arguments and DEAD_LETTER_EXCHANGE in queue_arguments:
        missing = await publisher.dead_letter_target_missing(queue_arguments)
        if missing is None:
            if before_settle is not None:
                await before_settle()
            await message.reject(requeue=False)
            return (
                f"dead-lettered through exchange "
                f"{queue_arguments[DEAD_LETTER_EXCHANGE]!r}"
            )
    parking = await publisher.park(message, queue=queue, error=reason)
    if before_settle is not None:
        await before_settle()
    await settle(message, queue=queue)
    if missing is not None:
        return f"parked in {parking!r}, because {missing}"
    return f"parked in {parking!r}"


@dataclass(frozen=True)
class Delivery:
    """A message an executor is handling, and what its fate depends on."""

    message: AbstractIncomingMessage
    queue: str
    """The queue it was consumed from (and goes back to)."""
    subject: str
    """How log lines name it: ``message 'm-1' from queue 'q'``, ``rpc svc.m``, ..."""
    queue_arguments: Mapping[str, Any] | None = None
    """That queue's declare arguments, if known (its dead-letter exchange)."""
    on_expired: ExpiryAction = dead_letter_or_park
    """The final action once its retries are spent."""

    @property
    def key(self) -> Hashable:
        return message_key(self.message, self.queue)


@dataclass(frozen=True)
class Decision:
    """The table's action for one outcome of one delivery."""

    outcome: Outcome
    action: Action
    tries: int
    """Transient failures in a row of this message, this one included (counted
    outcomes only, else 0)."""
    pause: float
    """Seconds to wait before it goes back (for :attr:`Settle.REQUEUE_LATER`)."""


_TRACEBACK = frozenset(
    {
        Outcome.HANDLER_ERROR,
        Outcome.NOT_PLACED_PERMANENT,
        Outcome.PLANNING_ERROR,
        Outcome.FINAL_ACTION_FAILED,
    }
)
"""Outcomes whose log line carries the error's traceback (when there is one)."""

_SETTLED = {
    Settle.ACK: "acked",
    Settle.HANDLER_RULE: "acked",
    Settle.REQUEUE_NOW: "back on its queue now",
}


def decision_fields(delivery: Delivery, decision: Decision) -> dict[str, Any]:
    """The structured fields (``extra=``) of a decision's log line."""
    message = delivery.message
    return retry_fields(
        delivery.queue,
        message.message_id,
        retries_done(message.headers),
        outcome=str(decision.outcome),
    )


class Settling:
    """Decides by the table and carries out what every asyncio executor shares.

    One per executor: it holds the :class:`~aio_backoff.core.FailurePolicy`, the
    per-message counts of transient failures, the publisher that keeps messages
    and the logger of the executor's lines.
    """

    def __init__(
        self,
        policy: FailurePolicy | None = None,
        *,
        publisher: DelayedPublisher | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.policy = FailurePolicy() if policy is None else policy
        self.tries = TransientTries()
        self.publisher = publisher
        self.log = logger
        self._stopping = asyncio.Event()

    # -- deciding ----------------------------------------------------------------

    def decide(self, delivery: Delivery, outcome: Outcome) -> Decision:
        """The action for ``outcome``; counts it if it brings the message back."""
        tries = self.tries.failed(delivery.key) if outcome in COUNTED else 0
        action = decide_action(outcome, transient_tries=tries, policy=self.policy)
        return Decision(outcome, action, tries, self.policy.pause(tries))

    def settled(self, message: AbstractIncomingMessage, queue: str) -> None:
        """``message`` (from ``queue``) was settled for good: forget its failures."""
        if len(self.tries):
            self.tries.clear(message_key(message, queue))

    # -- pauses ------------------------------------------------------------------

    def stop_pausing(self) -> None:
        """Cut every pause short: those messages go back to their queues now."""
        self._stopping.set()

    def resume(self) -> None:
        """Pause again (after a restart)."""
        self._stopping.clear()

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- the log line -------------------------------------------------------------

    def line(
        self,
        decision: Decision,
        subject: str,
        happened: str,
        settled: str,
        *,
        exc_info: BaseException | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """The one line of a decision: ``{subject}: {happened}; {settled}``.

        ``fields`` are its structured fields (``extra=``, see
        :func:`~aio_backoff.core._events.retry_fields`).
        """
        traceback = exc_info if decision.outcome in _TRACEBACK else None
        self.log.log(
            decision.action.level,
            "%s: %s; %s",
            subject,
            happened,
            settled,
            exc_info=traceback,
            extra=fields,
        )

    def requeued_later(self, decision: Decision, queue: str) -> str:
        most = self.policy.max_transient_tries or "unlimited"
        return (
            f"goes back to queue {queue!r} in {decision.pause:.3g} s "
            f"({decision.outcome}, try {decision.tries} of {most})"
        )

    # -- carrying it out ----------------------------------------------------------

    async def carry_out(
        self,
        delivery: Delivery,
        decision: Decision,
        *,
        happened: str,
        reason: str | None = None,
        replied: bool = False,
        error: BaseException | None = None,
        before_keeping: Callable[[], Awaitable[object]] | None = None,
    ) -> bool:
        """Settle ``delivery`` as ``decision`` says, with its one log line.

        ``happened`` says what happened (for the log), ``reason`` why a kept message
        was kept (its ``backoff-error``; default ``happened``), ``replied`` that the
        RPC caller was sent the error, ``error`` the ``Backoff.Expired`` of a final
        action or the traceback to log; ``before_keeping`` runs between placing the
        kept copy and settling the message (see :func:`keep`). Returns True once
        the message is settled for good (False: it goes back to its queue). The
        stack's own rule for handler errors (:attr:`Settle.HANDLER_RULE`) is not
        done here.
        """
        settle_as = decision.action.settle
        subject = delivery.subject
        answered = "replied with the error; " if replied else ""
        if settle_as in (Settle.REQUEUE_LATER, Settle.REQUEUE_NOW):
            if settle_as is Settle.REQUEUE_LATER:
                settled = self.requeued_later(decision, delivery.queue)
            else:
                settled = _SETTLED[settle_as]
            self.line(
                decision,
                subject,
                happened,
                f"{answered}{settled}",
                exc_info=error,
                fields=decision_fields(delivery, decision),
            )
            try:
                if settle_as is Settle.REQUEUE_LATER:
                    await self.pause(decision.pause)
            finally:  # also when cancelled: back on its queue now
                await requeue(delivery.message, delivery.queue, logger=self.log)
            return False
        if settle_as is Settle.FINAL_ACTION:
            assert isinstance(error, Backoff.Expired)
            return await self._final_action(
                delivery, decision, happened=happened, answered=answered, expired=error
            )
        if settle_as is Settle.DEAD_LETTER_OR_PARK:
            return await self._keep(
                delivery,
                decision,
                happened=happened,
                answered=answered,
                reason=reason or happened,
                error=error,
                before_settle=before_keeping,
            )
        self.line(
            decision,
            subject,
            happened,
            f"{answered}{_SETTLED[settle_as]}",
            exc_info=error,
            fields=decision_fields(delivery, decision),
        )
        await settle(delivery.message, queue=delivery.queue, logger=self.log)
        self.settled(delivery.message, delivery.queue)
        return True

    async def _keep(
        self,
        delivery: Delivery,
        decision: Decision,
        *,
        happened: str,
        answered: str,
        reason: str,
        error: BaseException | None,
        before_settle: Callable[[], Awaitable[object]] | None,
    ) -> bool:
        assert self.publisher is not None  # started
        try:
            done = await keep(
                delivery.message,
                queue=delivery.queue,
                queue_arguments=delivery.queue_arguments,
                publisher=self.publisher,
                reason=reason,
                before_settle=before_settle,
            )
        except Exception as failure:  # noqa: BLE001 - the table has an outcome for it
            self.line(
                decision,
                delivery.subject,
                happened,
                f"{answered}keeping it failed: {failure}",
                fields=decision_fields(delivery, decision),
            )
            return await self._final_action_failed(delivery, failure)
        self.settled(delivery.message, delivery.queue)
        self.line(
            decision,
            delivery.subject,
            happened,
            f"{answered}dead-lettered or parked: {done} ({decision.outcome})",
            exc_info=error,
            fields=decision_fields(delivery, decision),
        )
        return True

    async def _final_action(
        self,
        delivery: Delivery,
        decision: Decision,
        *,
        happened: str,
        answered: str,
        expired: Backoff.Expired,
    ) -> bool:
        assert self.publisher is not None  # started
        action = delivery.on_expired
        if action not in BUILT_IN_ACTIONS:  # the built-in ones log what they did
            self.line(
                decision,
                delivery.subject,
                happened,
                f"{answered}calling on_expired {action!r}",
                fields=decision_fields(delivery, decision),
            )
        try:
            await run_final_action(
                action,
                ExpiredMessage(
                    message=delivery.message,
                    queue=delivery.queue,
                    queue_arguments=delivery.queue_arguments,
                    error=expired,
                    publisher=self.publisher,
                ),
            )
        except Exception as failure:
            await self._final_action_failed(delivery, failure)
            raise
        except BaseException:
            await requeue(delivery.message, delivery.queue, logger=self.log)
            raise
        await settle(delivery.message, queue=delivery.queue, logger=self.log)
        self.settled(delivery.message, delivery.queue)
        return True

    async def _final_action_failed(
        self, delivery: Delivery, failure: Exception
    ) -> bool:
        if delivery.message.processed:
            return True  # kept; only what came after failed (logged)
        decision = self.decide(delivery, Outcome.FINAL_ACTION_FAILED)
        return await self.carry_out(
            delivery,
            decision,
            happened=f"its final action failed: {failure!r}",
            error=failure,
        )
