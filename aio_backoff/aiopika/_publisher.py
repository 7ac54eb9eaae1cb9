"""Publishing delayed copies and parked messages, with mandatory + publisher confirms.

:class:`DelayedPublisher` carries out a :class:`~aio_backoff.RetryPlan`: it declares
the delay topology when its lease is due (see :class:`~aio_backoff.LeaseBook`),
publishes a copy of the message with ``mandatory`` set and waits for the broker's
confirm. A copy that comes back unroutable (its delay queue expired or was deleted)
is declared and published once more; if that fails too, :class:`CopyNotPlaced` is
raised and the caller must put the original back on its queue.

The publisher works on a channel of its own, opened on the connection of the channel
it is given: a declare that the broker refuses (``PRECONDITION_FAILED`` when a queue
or exchange already exists with other arguments) closes only that channel, never
the channel the application consumes on, and the returned-message bookkeeping of
the publisher cannot be disturbed by the application's own publishes. The channel
is opened on first use and opened again after it was closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import (
    AMQPChannelError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic

from ..core._backoff import Backoff
from ..core._plan import RetryPlan, plan_retry
from ..core._protocol import KEPT_PROPERTIES, parked_headers
from ..core._topology import (
    DEFAULT_EXCHANGE,
    EXPIRY_GRACE_PERIOD_MS,
    DelayQueue,
    LeaseBook,
    parking_queue_name,
)

__all__ = ["CopyNotPlaced", "DelayedPublisher"]

log = logging.getLogger("aio_backoff").getChild("republish")

_PROPERTY_NAMES = {"type": "message_type"}
"""aio-pika attribute name -> AMQP property name, where they differ."""

_KEPT = tuple((name, _PROPERTY_NAMES.get(name, name)) for name in KEPT_PROPERTIES)
"""``KEPT_PROPERTIES`` as (aio-pika attribute, AMQP property) name pairs."""


class CopyNotPlaced(Exception):
    """The broker did not take a delayed (or parked) copy of a message.

    It returned the copy as unroutable even after a fresh declare, nacked it, or
    refused to declare the topology. The original message has not been settled:
    put it back on its queue (``nack(requeue=True)``) so that nothing is lost.
    """


def _returned_reason(error: PublishError) -> str:
    delivery = None if error.message is None else error.message.delivery
    if isinstance(delivery, Basic.Return):
        return f"returned by the broker: {delivery.reply_code} {delivery.reply_text}"
    return "returned by the broker"  # pragma: no cover - aiormq always sets it


class DelayedPublisher:
    """Publishes delayed copies through the delay topology, with mandatory + confirms.

    ``channel`` is any channel of the connection to publish on; the publisher opens
    a channel of its own on that connection (see the module docstring for why).
    ``exchange`` and ``grace_ms`` name the delay topology (the defaults are the
    nameko-amqp-retry ones); ``lease_book`` may be shared by publishers of one
    process so that each delay queue is renewed once per half grace period.

    A message without a ``message_id`` gets a random one on its copy: aiormq needs
    one to match a returned copy to its publish. Copies of messages that share a
    ``message_id`` are published one after the other for the same reason.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        grace_ms: int = EXPIRY_GRACE_PERIOD_MS,
        lease_book: LeaseBook | None = None,
    ) -> None:
        self.source_channel = channel
        self.exchange = exchange
        self.grace_ms = grace_ms
        self.lease_book = LeaseBook() if lease_book is None else lease_book
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._open_lock = asyncio.Lock()
        self._in_flight: dict[str, asyncio.Event | None] = {}
        self._renewing: dict[tuple[str, str], asyncio.Lock] = {}

    # -- channel ---------------------------------------------------------------

    async def _publishing_channel(self) -> aiormq.abc.AbstractChannel:
        """Our own confirming channel, opened (again) when needed."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._open_lock:
            if self._channel is None or self._channel.is_closed:
                underlay = await self.source_channel.get_underlay_channel()
                self._channel = await underlay.connection.channel(
                    publisher_confirms=True,
                    on_return_raises=True,
                )
                log.debug(
                    "opened publishing channel %r on %r",
                    self._channel.number,
                    underlay.connection,
                )
            return self._channel

    async def close(self) -> None:
        """Close the publisher's own channel (the given channel is left alone)."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def _claim(self, message_id: str | None) -> None:
        """Wait until no other copy of ``message_id`` is in flight, then claim it.

        Publishes of one ``message_id`` are serialised because aiormq matches a
        returned copy to its publish by it (a copy without one gets a random one
        from aiormq: nothing to claim). Pair with :meth:`_release`. The event a
        waiter needs is made by the first waiter, so an uncontended claim (the
        usual case) costs a dict entry and nothing else.
        """
        if not message_id:
            return
        in_flight = self._in_flight
        while message_id in in_flight:
            busy = in_flight[message_id]
            if busy is None:
                busy = in_flight[message_id] = asyncio.Event()
            await busy.wait()
        in_flight[message_id] = None

    def _release(self, message_id: str | None) -> None:
        """End the claim :meth:`_claim` made and wake whoever waits for it."""
        if not message_id:
            return
        busy = self._in_flight.pop(message_id)
        if busy is not None:
            busy.set()

    # -- what a copy looks like ------------------------------------------------

    def copy_headers(
        self,
        message: AbstractIncomingMessage,
        plan: RetryPlan,
        extra_headers: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The headers of the delayed copy: ``plan.headers`` plus ``extra_headers``.

        A hook: override it to change what the copy carries.
        """
        headers = dict(plan.headers)
        if extra_headers:
            headers.update(extra_headers)
        return headers

    @staticmethod
    def copy_properties(
        message: AbstractIncomingMessage,
        *,
        headers: Mapping[str, Any],
        expiration: str | None,
    ) -> aiormq.spec.Basic.Properties:
        """``message``'s properties (``KEPT_PROPERTIES``) with new headers/expiration.

        aio-pika reports an absent priority as 0 and an absent delivery mode as 1
        (not persistent); the copy carries those values explicitly.
        """
        kept = {amqp: getattr(message, name) for name, amqp in _KEPT}
        mode = kept["delivery_mode"]
        kept["delivery_mode"] = None if mode is None else int(mode)
        return aiormq.spec.Basic.Properties(
            **kept,
            headers=dict(headers),
            expiration=expiration,
        )

    # -- publishing ------------------------------------------------------------

    async def _declare(
        self, channel: aiormq.abc.AbstractChannel, queue: DelayQueue
    ) -> None:
        started = self.lease_book.now()
        await channel.exchange_declare(
            queue.exchange, exchange_type="headers", durable=True
        )
        await channel.queue_declare(queue.name, durable=True, arguments=queue.arguments)
        await channel.queue_bind(
            queue.name,
            queue.exchange,
            routing_key="",
            arguments=queue.binding_arguments,
        )
        self.lease_book.declared(queue, at=started)
        log.debug(
            "declared delay queue %r on exchange %r (x-expires %r ms)",
            queue.name,
            queue.exchange,
            queue.arguments["x-expires"],
        )

    async def _renew_lease(self, queue: DelayQueue, *, force: bool) -> None:
        """Declare ``queue`` once for all the publishes that find its lease due.

        Without this, every publish in flight when a lease falls due (up to the
        consumers' prefetch) declares the exchange, queue and binding itself: a burst
        of synchronous round trips that also hold the channel's lock, so the
        publishes queue up behind them. ``force`` (a copy came back unroutable)
        declares even if the lease looks fresh.
        """
        lock = self._renewing.setdefault((queue.exchange, queue.name), asyncio.Lock())
        async with lock:
            if force or self.lease_book.needs_declare(queue):
                await self._declare(await self._publishing_channel(), queue)

    def _not_placed(self, plan: RetryPlan, reason: str) -> CopyNotPlaced:
        queue = plan.delay_queue
        return CopyNotPlaced(
            f"the delayed copy of a message for queue {plan.routing_key!r} "
            f"(retry #{plan.retry_number}, {plan.delay_ms} ms via exchange "
            f"{queue.exchange!r} and delay queue {queue.name!r}) could not be "
            f"placed: {reason}. Put the original back on its queue; check that "
            "the exchange and the delay queue can be declared with the arguments "
            "of docs/protocol.md and that no policy rejects the copy."
        )

    async def publish_copy(
        self,
        message: AbstractIncomingMessage,
        plan: RetryPlan,
        *,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish the delayed copy ``plan`` describes; confirmed when this returns.

        Declares the topology when its lease is due; declares and publishes once
        more when the copy comes back unroutable. Raises :class:`CopyNotPlaced` when
        the copy cannot be placed. Never settles ``message``.
        """
        queue = plan.delay_queue
        properties = self.copy_properties(
            message,
            headers=self.copy_headers(message, plan, extra_headers),
            expiration=plan.expiration_ms,
        )
        failure: Exception | None = None
        reason = ""
        message_id = properties.message_id
        await self._claim(message_id)
        try:
            for attempt in (1, 2):
                try:
                    if attempt == 2 or self.lease_book.needs_declare(queue):
                        await self._renew_lease(queue, force=attempt == 2)
                    channel = self._channel
                    if channel is None or channel.is_closed:
                        channel = await self._publishing_channel()
                    await channel.basic_publish(
                        message.body,
                        exchange=queue.exchange,
                        routing_key=plan.routing_key,
                        properties=properties,
                        mandatory=True,
                    )
                except PublishError as error:
                    reason, failure = _returned_reason(error), error
                except ChannelNotFoundEntity as error:
                    # the exchange was deleted since we declared it
                    reason, failure = f"refused by the broker: {error}", error
                except ChannelInvalidStateError as error:
                    # another publish's refused declare closed the shared channel
                    # under this one: the next attempt opens a fresh channel
                    reason, failure = f"interrupted (channel closed: {error})", error
                except DeliveryError as error:
                    raise self._not_placed(
                        plan, f"nacked by the broker ({error.frame!r})"
                    ) from error
                except AMQPChannelError as error:
                    self.lease_book.forget(queue)
                    raise self._not_placed(
                        plan, f"the broker closed the publishing channel: {error}"
                    ) from error
                else:
                    return
                self.lease_book.forget(queue)
                if attempt == 1:
                    log.warning(
                        "delayed copy for queue %r was %s; declaring delay queue %r "
                        "again and publishing once more",
                        plan.routing_key,
                        reason,
                        queue.name,
                    )
        finally:
            self._release(message_id)
        raise self._not_placed(plan, f"{reason}, also after a fresh declare") from (
            failure
        )

    def plan(
        self, message: AbstractIncomingMessage, backoff: Backoff, *, target_queue: str
    ) -> RetryPlan:
        """:func:`~aio_backoff.plan_retry` for ``message`` on this delay topology.

        Raises ``Backoff.Expired`` (chained from ``backoff``) when the limit is spent.
        """
        return plan_retry(
            backoff,
            message.headers,
            target_queue=target_queue,
            exchange=self.exchange,
            grace_ms=self.grace_ms,
        )

    async def retry(
        self,
        message: AbstractIncomingMessage,
        backoff: Backoff,
        *,
        target_queue: str,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> RetryPlan:
        """Plan the next retry of ``message`` and publish its delayed copy.

        Raises ``Backoff.Expired`` (chained from ``backoff``) when the limit is spent
        and :class:`CopyNotPlaced` when the copy cannot be placed. Does not settle
        ``message``.
        """
        plan = self.plan(message, backoff, target_queue=target_queue)
        await self.publish_copy(message, plan, extra_headers=extra_headers)
        return plan

    async def park(
        self,
        message: AbstractIncomingMessage,
        *,
        queue: str,
        error: BaseException,
    ) -> str:
        """Publish ``message`` to ``{queue}.parked`` (declared durable), confirmed.

        The copy keeps body and properties (no expiration) and gains the headers
        ``backoff-error`` (``str(error)``) and ``backoff-queue`` (``queue``). Returns
        the parking queue's name; raises :class:`CopyNotPlaced` when the broker does
        not take the copy. Does not settle ``message``.
        """
        parking = parking_queue_name(queue)
        properties = self.copy_properties(
            message,
            headers=parked_headers(message.headers, error=str(error), queue=queue),
            expiration=None,
        )
        message_id = properties.message_id
        await self._claim(message_id)
        try:
            channel = await self._publishing_channel()
            await channel.queue_declare(parking, durable=True)
            await channel.basic_publish(
                message.body,
                exchange="",
                routing_key=parking,
                properties=properties,
                mandatory=True,
            )
        except (DeliveryError, AMQPChannelError) as failure:
            msg = (
                f"could not park a message from queue {queue!r} in {parking!r}: "
                f"{failure!r}. Put the original back on its queue and check "
                f"that {parking!r} can be declared as a durable queue."
            )
            raise CopyNotPlaced(msg) from failure
        finally:
            self._release(message_id)
        log.debug("parked a message from queue %r in %r", queue, parking)
        return parking
