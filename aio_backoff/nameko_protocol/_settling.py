"""Carrying out the ack and failure table for one delivery: reply, settle, log.

Every path of a :class:`~aio_backoff.NamekoService` ends here with an
:class:`~aio_backoff.core.Outcome`; :class:`Settler` asks
:func:`~aio_backoff.core.decide` for the action and does it:

- reply (RPC only): the result, the error, or nothing yet;
- settle: ack; run the final action; dead-letter or park; put the message back on
  its queue now, or after :meth:`FailurePolicy.pause
  <aio_backoff.core.FailurePolicy.pause>` (transient failures, counted per message
  with :class:`~aio_backoff.core.TransientTries`, so that one that keeps failing is
  parked instead of coming back for ever);
- one log line at the table's level.

A reply that cannot be sent counts as a transient failure of its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..aiopika._expiry import (
    DEAD_LETTER_EXCHANGE_ARGUMENT,
    ExpiredMessage,
    ExpiryAction,
    run_final_action,
)
from ..aiopika._publisher import DelayedPublisher
from ..core._backoff import Backoff
from ..core._outcome import (
    Action,
    FailurePolicy,
    Outcome,
    Reply,
    Settle,
    TransientTries,
    decide,
)
from ..core.nameko_wire import serialize_error
from ._replies import CHANNEL_ERRORS, ReplySender

__all__ = ["Delivery", "NotHandled", "Settler"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")

_COUNTED = frozenset({Outcome.NOT_PLACED_TRANSIENT, Outcome.FINAL_ACTION_FAILED})
"""Outcomes that bring a message back: counted per message until it is settled."""

_SETTLED = {
    Settle.ACK: "acked",
    Settle.HANDLER_RULE: "acked",
    Settle.FINAL_ACTION: "its final action runs",
    Settle.DEAD_LETTER_OR_PARK: "dead-lettered or parked",
    Settle.REQUEUE_NOW: "back on its queue now",
}


class NotHandled(Exception):
    """Why a message was dead-lettered or parked (its ``backoff-error`` header)."""


class ReplyNotSent(ConnectionError):
    """The reply of an RPC request could not be published (transient)."""


@dataclass(frozen=True)
class Delivery:
    """A message being handled, and what its fate depends on."""

    message: AbstractIncomingMessage
    queue: str
    """The queue it was consumed from."""
    what: str
    """``rpc {service}.{method}`` or ``event handler {service}.{method}``: for logs."""
    on_expired: ExpiryAction
    rpc: bool
    """An RPC request: its caller is answered as the table says."""

    @property
    def key(self) -> str:
        """Identifies the message across redeliveries, for :class:`TransientTries`."""
        message = self.message
        digest = hashlib.blake2b(digest_size=16)
        digest.update(
            repr(
                (
                    self.queue,
                    message.message_id,
                    message.correlation_id,
                    sorted((message.headers or {}).items(), key=lambda kv: kv[0]),
                )
            ).encode(errors="replace")
        )
        digest.update(message.body)
        return digest.hexdigest()


class Settler:
    """Does what :func:`~aio_backoff.core.decide` says for each delivery."""

    def __init__(
        self,
        replies: ReplySender,
        *,
        failure_policy: FailurePolicy,
        queue_arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.replies = replies
        self.failure_policy = failure_policy
        self.queue_arguments = dict(queue_arguments or {})
        self.tries = TransientTries()
        self.publisher: DelayedPublisher | None = None
        self._stopping = asyncio.Event()

    def start(self, publisher: DelayedPublisher) -> None:
        self.publisher = publisher
        self._stopping.clear()

    def stop_pausing(self) -> None:
        """Cut every pause short: those messages go back to their queues now."""
        self._stopping.set()

    async def carry_out(
        self,
        delivery: Delivery,
        outcome: Outcome,
        *,
        error: BaseException | None = None,
        result: Any = None,
        reply_error: Mapping[str, Any] | None = None,
        detail: str = "",
        answer: bool = True,
    ) -> None:
        """Reply, settle and log for ``outcome`` as the table says.

        ``reply_error`` is the error sent to an RPC caller (default: ``error``
        serialized); ``answer=False`` sends nothing (the reply just failed).
        """
        key = delivery.key
        tries = self.tries.failed(key) if outcome in _COUNTED else 0
        action = decide(outcome, transient_tries=tries, policy=self.failure_policy)
        replying = answer and delivery.rpc and action.reply is not Reply.NONE
        self._log(
            delivery,
            outcome,
            action,
            error=error,
            tries=tries,
            detail=detail,
            replying=replying,
        )
        if replying:
            sent = await self.replies.send(
                delivery.message,
                result=result if action.reply is Reply.RESULT else None,
                error=None
                if action.reply is Reply.RESULT
                else reply_error or serialize_error(error or NotHandled(outcome)),
            )
            if not sent:
                failure = ReplyNotSent(
                    f"the reply to RPC request {delivery.message.correlation_id!r} "
                    "could not be published"
                )
                await self.carry_out(
                    delivery, Outcome.NOT_PLACED_TRANSIENT, error=failure, answer=False
                )
                return
        if await self._settle(delivery, action, outcome, error, tries):
            self.tries.clear(key)  # settled for good: its failures are forgotten

    async def _settle(
        self,
        delivery: Delivery,
        action: Action,
        outcome: Outcome,
        error: BaseException | None,
        tries: int,
    ) -> bool:
        """Settle as ``action`` says; True if the message is settled for good
        (not handed back to its queue)."""
        settle = action.settle
        if settle in (Settle.ACK, Settle.HANDLER_RULE):
            await self.settle(delivery.message)
            return True
        if settle is Settle.FINAL_ACTION:
            return await self._final_action(delivery, error)
        if settle is Settle.DEAD_LETTER_OR_PARK:
            reason = NotHandled(f"{outcome.value}: {error!r}")
            return await self._dead_letter_or_park(delivery, reason)
        if settle is Settle.REQUEUE_LATER:
            await self._pause(self.failure_policy.pause(tries))
        await self.settle(delivery.message, requeue=True)
        return False

    async def _final_action(
        self, delivery: Delivery, error: BaseException | None
    ) -> bool:
        assert self.publisher is not None  # started
        assert isinstance(error, Backoff.Expired)
        try:
            await run_final_action(
                delivery.on_expired,
                ExpiredMessage(
                    message=delivery.message,
                    queue=delivery.queue,
                    queue_arguments=self.queue_arguments,
                    error=error,
                    publisher=self.publisher,
                ),
            )
        except Exception as failure:  # noqa: BLE001 - the table has an outcome for it
            await self.carry_out(
                delivery, Outcome.FINAL_ACTION_FAILED, error=failure, answer=False
            )
            return False
        if not delivery.message.processed:
            await self.settle(delivery.message)
        return True

    async def _dead_letter_or_park(
        self, delivery: Delivery, reason: NotHandled
    ) -> bool:
        """Reject to the queue's dead-letter exchange if it has one, else park."""
        assert self.publisher is not None  # started
        message = delivery.message
        try:
            if DEAD_LETTER_EXCHANGE_ARGUMENT in self.queue_arguments:
                await message.reject(requeue=False)
            else:
                await self.publisher.park(message, queue=delivery.queue, error=reason)
                await message.ack()
        except Exception as failure:  # noqa: BLE001 - the table has an outcome for it
            if message.processed:
                return True  # parked; only the ack failed (logged by aio-pika)
            await self.carry_out(
                delivery, Outcome.FINAL_ACTION_FAILED, error=failure, answer=False
            )
            return False
        return True

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def settle(
        self, message: AbstractIncomingMessage, *, requeue: bool | None = None
    ) -> None:
        """Ack (``requeue`` None) or nack; a settle that cannot happen is logged."""
        try:
            if requeue is None:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except CHANNEL_ERRORS as error:
            log.warning(
                "could not settle message %r (%r); the broker redelivers it if it "
                "was not settled",
                message.message_id,
                error,
            )

    def _log(
        self,
        delivery: Delivery,
        outcome: Outcome,
        action: Action,
        *,
        error: BaseException | None,
        tries: int,
        detail: str,
        replying: bool,
    ) -> None:
        if not log.isEnabledFor(action.level):
            return
        if action.settle is Settle.REQUEUE_LATER:
            settled = (
                f"back on its queue in {self.failure_policy.pause(tries):.3g} s "
                f"(try {tries} of {self.failure_policy.max_transient_tries or 'any'})"
            )
        else:
            settled = _SETTLED[action.settle]
            if outcome in _COUNTED:
                settled = f"{settled} after {tries} tries"
        if replying and action.reply is Reply.ERROR:
            settled = f"replied with the error; {settled}"
        happened = detail or (
            outcome.value if error is None else f"{outcome.value} {error!r}"
        )
        traceback = error if outcome in _TRACEBACK else None
        log.log(
            action.level,
            "%s: %s; %s",
            delivery.what,
            happened,
            settled,
            exc_info=traceback,
        )


_TRACEBACK = frozenset(
    {
        Outcome.HANDLER_ERROR,
        Outcome.NOT_PLACED_PERMANENT,
        Outcome.PLANNING_ERROR,
        Outcome.FINAL_ACTION_FAILED,
    }
)
"""Outcomes whose log line carries the error's traceback."""
