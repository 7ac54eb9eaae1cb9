"""Carrying out the ack and failure table for one delivery: reply, then settle.

Every path of a :class:`~aio_backoff.NamekoService` ends here with an
:class:`~aio_backoff.core.Outcome`. :class:`Settler` does what is the nameko
protocol's own, the reply to an RPC caller (the result, the error, or nothing yet),
and hands the rest to the aio-pika layer's
:class:`~aio_backoff.aiopika._settle.Settling`, as ``Retrier`` and ``BackoffRPC``
do: the decision (with the per-message count of transient failures), keeping a
message (dead-letter when the dead-letter exchange exists, else park), putting it
back now or after a pause, the final action, and the one log line.

A reply that cannot be sent counts as a transient failure of its request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..aiopika._publisher import DelayedPublisher
from ..aiopika._settle import Delivery as SettlingDelivery
from ..aiopika._settle import Settling, decision_fields, settle
from ..core._outcome import FailurePolicy, Outcome, Reply, Settle
from ..core.nameko_wire import serialize_error
from ._replies import ReplySender

__all__ = ["Delivery", "NotHandled", "Settler"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")


class NotHandled(Exception):
    """Why a message was dead-lettered or parked (its ``backoff-error`` header)."""


class ReplyNotSent(ConnectionError):
    """The reply of an RPC request could not be published (transient)."""


@dataclass(frozen=True)
class Delivery(SettlingDelivery):
    """A message being handled by the service, and what its fate depends on."""

    rpc: bool = False
    """An RPC request: its caller is answered as the table says."""


class Settler:
    """Replies and settles as :func:`~aio_backoff.core.decide` says, per delivery."""

    def __init__(
        self,
        replies: ReplySender,
        *,
        failure_policy: FailurePolicy,
        queue_arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.replies = replies
        self.queue_arguments = dict(queue_arguments or {})
        self.settling = Settling(failure_policy, logger=log)

    @property
    def failure_policy(self) -> FailurePolicy:
        return self.settling.policy

    @property
    def publisher(self) -> DelayedPublisher | None:
        return self.settling.publisher

    def start(self, publisher: DelayedPublisher) -> None:
        self.settling.publisher = publisher
        self.settling.resume()

    def stop_pausing(self) -> None:
        """Cut every pause short: those messages go back to their queues now."""
        self.settling.stop_pausing()

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
        settling = self.settling
        decision = settling.decide(delivery, outcome)
        action = decision.action
        replying = answer and delivery.rpc and action.reply is not Reply.NONE
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
        happened = detail or (
            outcome.value if error is None else f"{outcome.value} {error!r}"
        )
        if action.settle is Settle.HANDLER_RULE:  # nameko's rule: ack
            replied = "replied with the error; " if replying else ""
            settling.line(
                decision,
                delivery.subject,
                happened,
                f"{replied}acked",
                exc_info=error,
                fields=decision_fields(delivery, decision),
            )
            await settle(delivery.message, queue=delivery.queue, logger=log)
            settling.settled(delivery.message, delivery.queue)
            return
        if self.queue_arguments:
            delivery = dataclasses.replace(
                delivery, queue_arguments=self.queue_arguments
            )
        with contextlib.suppress(Exception):  # a failed final action: logged, put back
            await settling.carry_out(
                delivery,
                decision,
                happened=happened,
                reason=str(NotHandled(f"{outcome.value}: {error!r}")),
                replied=replying and action.reply is Reply.ERROR,
                error=error,
            )
