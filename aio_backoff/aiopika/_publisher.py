"""Publishing delayed copies and parked messages, with mandatory + publisher confirms.

:class:`DelayedPublisher` carries out a :class:`~aio_backoff.RetryPlan`: it declares
the delay topology when its lease is due (:mod:`._leases`), publishes a copy of the
message with ``mandatory`` set and waits, at most ``confirm_timeout`` seconds, for the
broker's confirm. A copy that comes back unroutable (its delay queue expired or was
deleted) or finds its exchange gone is declared and published once more. Whatever
still fails raises :class:`CopyNotPlaced`, which says whether it is permanent.

It works on a connection of its own (:mod:`._connection`), so that a refusal can
close neither the channel nor the connection the application consumes on.
Parking (:mod:`._parking`) and the ``message_id`` claims (:mod:`._claims`) share it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import (
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)

from ..core import _events as events
from ..core._backoff import Backoff
from ..core._events import NO_HOOKS, Hooks, emit
from ..core._ladder import QUEUE_TYPES, Ladder, QueueType
from ..core._outcome import FailurePolicy
from ..core._plan import RetryPlan, plan_retry
from ..core._protocol import KEPT_PROPERTIES, encodable_headers, parked_headers
from ..core._renames import UNSET, deprecated, renamed
from ..core._topology import (
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    LeaseBook,
    TopologyName,
    check_topology,
)
from ..core._trace import add_traceparent
from ._claims import MessageIdClaims
from ._connection import PublishingConnection
from ._failures import (
    REFUSED,
    CopyNotPlaced,
    PublisherUnavailable,
    describe,
    not_placed,
)
from ._ladder import LadderPlacement
from ._parking import Parking
from ._per_delay import PerDelay
from ._placement import Placement
from ._plugin import PluginPlacement

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT_S",
    "DEFAULT_TOPOLOGY",
    "CopyNotPlaced",
    "DelayedPublisher",
]

log = logging.getLogger("aio_backoff").getChild("republish")

DEFAULT_CONFIRM_TIMEOUT_S = 10.0
"""Seconds a publish waits for the broker's confirm before it counts as failed
(transient: the original goes back to its queue after a pause)."""

DEFAULT_TOPOLOGY: TopologyName = "ladder"
"""The topology of the asyncio entry points (nameko services keep ``"per-delay"``,
nameko-amqp-retry's, by default: see docs/topology.md)."""

_PROPERTY_NAMES = {"type": "message_type"}
"""aio-pika attribute name -> AMQP property name, where they differ."""

_KEPT = tuple((name, _PROPERTY_NAMES.get(name, name)) for name in KEPT_PROPERTIES)
"""``KEPT_PROPERTIES`` as (aio-pika attribute, AMQP property) name pairs."""

_INTERRUPTED = (ChannelInvalidStateError, ChannelClosed)
"""A channel closed under a publish: one more try on a fresh channel."""
_ONCE_MORE = (PublishError, ChannelNotFoundEntity, *_INTERRUPTED)
"""Failures a fresh declare (on a fresh channel) may mend."""


class DelayedPublisher:
    """Publishes delayed copies through the delay topology, with mandatory + confirms.

    - ``channel``: any channel of the consumer's connection; the publisher opens a
      connection of its own from that connection's URL (or from ``url``).
    - ``topology``: where copies wait: ``"ladder"`` (the default), ``"per-delay"``
      (nameko-amqp-retry's queues) or ``"plugin"`` (the delayed-message exchange);
      ``queue_type``: ``"classic"`` or ``"quorum"`` for the ladder's queues.
      docs/topology.md says which to pick.
    - ``delay_exchange`` names the delay topology: the per-delay headers exchange,
      and the first part of the ladder's and the plugin exchange's names;
      ``exchange=`` is the deprecated name of ``delay_exchange``.
    - ``grace_ms`` and ``lease_book`` (per-delay only): how long a delay queue
      outlives its delay; the book may be shared by the publishers of one process,
      so that each delay queue is renewed once per half grace period.
    - ``confirm_timeout``: seconds to wait for each confirm (default
      :data:`DEFAULT_CONFIRM_TIMEOUT_S`).
    - ``failure_policy``: the pauses of the gate's probe (see
      :class:`~aio_backoff.FailurePolicy`).

    A message without a ``message_id`` gets a random one on its copy: aiormq needs
    one to match a returned copy to its publish. Copies of messages that share a
    ``message_id`` are published one after the other for the same reason.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        topology: TopologyName = DEFAULT_TOPOLOGY,
        queue_type: QueueType = "classic",
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        lease_book: LeaseBook | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        url: str | None = None,
        failure_policy: FailurePolicy | None = None,
        exchange: str = UNSET,
        hooks: Hooks | None = None,
    ) -> None:
        self.source_channel = channel
        self.hooks: Hooks = NO_HOOKS if hooks is None else hooks
        """Who is told of scheduled, expired, not-placed and parked copies
        (docs/observability.md)."""
        self.topology: TopologyName = check_topology(topology)
        self.delay_exchange: str = renamed(
            "DelayedPublisher", "exchange", "delay_exchange", exchange, delay_exchange
        )
        if queue_type not in QUEUE_TYPES:  # whatever the topology, not at a switch
            msg = (
                f"queue_type must be 'classic' or 'quorum', got {queue_type!r} "
                "(the ladder's queues; docs/topology.md)"
            )
            raise ValueError(msg)
        self.queue_type: QueueType = queue_type
        self.grace_ms = grace_ms
        self.confirm_timeout = confirm_timeout
        self.connection = PublishingConnection(
            channel, url=url, open_timeout=confirm_timeout, policy=failure_policy
        )
        self.per_delay = PerDelay(lease_book)
        self._other_placements: dict[str, Placement] = {}
        self.placement: Placement
        if self.topology == "per-delay":
            self.placement = self.per_delay
        elif self.topology == "ladder":
            self.ladder = Ladder(self.delay_exchange, queue_type)
            self.placement = LadderPlacement(self.ladder)
        else:
            self.placement = PluginPlacement(self.delay_exchange)
        self.claims = MessageIdClaims()
        self.parking = Parking(
            self.connection, self.claims, confirm_timeout=confirm_timeout
        )
        self.uncertain_publishes = 0
        """Publishes interrupted after they were sent (channel closed, no confirm in
        time): the broker may have taken the copy, so the message may come back
        twice. Counted here and logged; never a loss."""

    @property
    def lease_book(self) -> LeaseBook:
        return self.per_delay.leases.book

    @property
    def exchange(self) -> str:
        """Deprecated name of :attr:`delay_exchange`."""
        deprecated("DelayedPublisher.exchange", "DelayedPublisher.delay_exchange")
        return self.delay_exchange

    @property
    def leases(self) -> Any:
        """The per-delay topology's leases (:class:`._per_delay.DelayQueueLeases`)."""
        return self.per_delay.leases

    async def declare(self, *, targets: Iterable[str] = ()) -> None:
        """Declare the delay topology now, ahead of the first retry, and bind
        ``targets``, the queues whose copies will come back through it.

        The ladder and the plugin's exchange are declared whole here (once per
        publisher, unless a failed copy calls for it again), and each target is
        bound to them, so that the first copies, even a burst of them, do not
        wait for declares; per-delay queues are declared with their first copy.
        Raises :class:`CopyNotPlaced` (permanent) when the broker
        refuses the topology (the plugin missing, access refused, a queue declared
        elsewhere with other arguments); a transient failure (no connection just
        now) is logged and left to the first copy.
        """
        what = f"the {self.topology} topology of {self.delay_exchange!r}"
        try:
            channel = await self._channel(f"declaring {what}")
            await self.placement.declare(channel, targets)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failure = not_placed(error, what)
            if failure.permanent:
                raise failure from error
            log.warning("%s; the first copy declares it instead", failure)

    def check_target(self, queue: str, *, exclusive: bool = False) -> None:
        """``ValueError`` when copies cannot come back to ``queue`` through this
        publisher's topology: a ladder target needs a name of at most 191 bytes
        without a ``*`` or ``#`` word, and a ladder or plugin target is bound from
        the publisher's own connection, which an ``exclusive`` queue refuses."""
        if self.topology == "ladder":
            self.ladder.check_target(queue)
        if exclusive and self.topology != "per-delay":
            msg = (
                f"queue {queue!r} is exclusive to the connection that declared it, "
                f"and the {self.topology} topology binds it to "
                f"{self.delay_exchange!r}'s exchange from the publisher's own "
                f"connection, which the broker refuses (RESOURCE_LOCKED). Use "
                f"topology='per-delay' for it, or a queue that is not exclusive"
            )
            raise ValueError(msg)

    # -- the gate ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether the publisher can publish, as far as it knows."""
        return self.connection.is_open

    async def wait_available(self) -> None:
        """Return once the publisher can publish again (at once when it can)."""
        await self.connection.wait_open()

    async def close(self) -> None:
        """Close the publisher's own connection (the given channel is left alone)."""
        await self.connection.close()

    # -- what a copy looks like ------------------------------------------------------

    def copy_headers(
        self,
        message: AbstractIncomingMessage,
        plan: RetryPlan,
        extra_headers: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """The headers of the delayed copy: ``plan.headers`` plus ``extra_headers``.

        A hook: override it to change what the copy carries (it is made encodable
        again afterwards).
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

    # -- publishing -------------------------------------------------------------------

    async def publish_copy(
        self,
        message: AbstractIncomingMessage,
        plan: RetryPlan,
        *,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish the delayed copy ``plan`` describes; confirmed when this returns.

        Declares what the copy needs (the ladder, the target's binding, a delay
        queue whose lease is due); declares and publishes once more when the copy
        comes back unroutable, its exchange is gone, its channel closed under it,
        or (per-delay) its confirm came too late to be sure the queue was leased.
        Raises :class:`CopyNotPlaced` (``permanent`` or not) when the copy cannot
        be placed. Never settles ``message``.
        """
        headers = self.copy_headers(message, plan, extra_headers)
        if (
            extra_headers
            or type(self).copy_headers is not DelayedPublisher.copy_headers
        ):
            headers = encodable_headers(headers)
        add_traceparent(headers)
        properties = self.copy_properties(message, headers=headers, expiration=None)
        message_id = properties.message_id
        await self.claims.claim(message_id)
        try:
            await self._place(message.body, plan, properties)
        except CopyNotPlaced as failure:
            self._tell_not_placed(plan, plan.routing_key, message, failure)
            raise
        finally:
            self.claims.release(message_id)
        if self.hooks.scheduled:
            emit(self.hooks.scheduled, events.scheduled(plan, message.message_id))

    def _tell_not_placed(
        self,
        plan: RetryPlan | None,
        queue: str,
        message: AbstractIncomingMessage,
        failure: CopyNotPlaced,
    ) -> None:
        if self.hooks.not_placed:
            emit(
                self.hooks.not_placed,
                events.not_placed(
                    plan,
                    queue=queue,
                    message_id=message.message_id,
                    permanent=failure.permanent,
                    reason=str(failure),
                ),
            )

    async def _channel(self, what: str) -> aiormq.abc.AbstractChannel:
        """The publishing channel; :class:`PublisherUnavailable` if it cannot open."""
        try:
            return await self.connection.channel()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise self._no_channel(what, error) from error

    def _no_channel(self, what: str, error: Exception) -> PublisherUnavailable:
        """The channel did not open: close the gate; the error to raise."""
        self.connection.unavailable(repr(error))
        msg = f"{what} found no channel to publish on: {error!r}"
        return PublisherUnavailable(msg)

    def _failed(
        self,
        error: Exception,
        what: str,
        plan: RetryPlan,
        *,
        sent: bool,
        channel: aiormq.abc.AbstractChannel | None = None,
    ) -> CopyNotPlaced:
        failure = not_placed(error, what)
        returned = isinstance(error, PublishError)
        if isinstance(error, DeliveryError) and not returned and channel is not None:
            # nacked: the next copy goes out on a fresh channel, as a nacking
            # channel may go on nacking. (Still uncertain: a nack says one queue
            # refused the copy, and another bound queue may have taken it.)
            self.connection.retire_channel(channel, self.confirm_timeout)
        if sent and not failure.permanent:
            self._uncertain(what, error)
        if isinstance(failure, PublisherUnavailable):
            self.placement_for(plan).forget(plan)
            self.connection.unavailable(repr(error))
        return failure

    def placement_for(self, plan: RetryPlan) -> Placement:
        """The placement of ``plan``'s topology (this publisher's, usually)."""
        if plan.topology == self.topology:
            return self.placement
        if plan.topology == "per-delay":
            return self.per_delay
        placement = self._other_placements.get(plan.topology)
        if placement is None:
            placement = self._other_placements[plan.topology] = (
                LadderPlacement(Ladder(self.delay_exchange, self.queue_type))
                if plan.topology == "ladder"
                else PluginPlacement(self.delay_exchange)
            )
        return placement

    async def _place(
        self, body: bytes, plan: RetryPlan, properties: aiormq.spec.Basic.Properties
    ) -> None:
        placement = self.placement_for(plan)
        properties = placement.properties(properties, plan)
        for again in (False, True):
            try:
                channel = await self.connection.channel()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                what = _describe_copy(plan, placement)
                raise self._no_channel(what, error) from error
            sent = False
            try:
                await placement.prepare(channel, plan, force=again)
                exchange, routing_key = placement.address(plan)
                sent = True
                await channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=placement.mandatory,
                    timeout=self.confirm_timeout,
                )
            except asyncio.CancelledError:
                raise
            except _ONCE_MORE as error:
                # returned (its queue expired or was deleted), exchange gone, or
                # the channel closed under it: declare and publish once more
                what = _describe_copy(plan, placement)
                if again or isinstance(error, REFUSED):
                    also = f"{what}, also after a fresh declare," if again else what
                    raise self._failed(error, also, plan, sent=sent) from error
                if sent and isinstance(error, _INTERRUPTED):
                    self._uncertain(what, error)
                placement.forget(plan)
                log.warning(
                    "%s: %s; declaring again and publishing once more",
                    what,
                    describe(error),
                )
            except Exception as error:
                what = _describe_copy(plan, placement)
                failure = self._failed(error, what, plan, sent=sent, channel=channel)
                raise failure from error
            else:
                if again or placement.held(plan):
                    return
                # confirmed too late to be sure its queue was still leased
                self._uncertain(
                    _describe_copy(plan, placement),
                    "a confirm later than the grace period",
                )
                placement.forget(plan)

    def _uncertain(self, what: str, error: BaseException | str) -> None:
        self.uncertain_publishes += 1
        log.warning(
            "%s may have been placed before %r (uncertain publishes so far: %r); "
            "the message may come back twice",
            what,
            error,
            self.uncertain_publishes,
        )

    def plan(
        self, message: AbstractIncomingMessage, backoff: Backoff, *, target_queue: str
    ) -> RetryPlan:
        """:func:`~aio_backoff.plan_retry` for ``message`` on this delay topology.

        Raises ``Backoff.Expired`` (chained from ``backoff``) when the limit is
        spent, :class:`~aio_backoff.BackoffConfigError` when the retry cannot be
        planned.
        """
        try:
            return plan_retry(
                backoff,
                message.headers,
                target_queue=target_queue,
                delay_exchange=self.delay_exchange,
                grace_ms=self.grace_ms,
                topology=self.topology,
            )
        except Backoff.Expired:
            if self.hooks.expired:
                emit(
                    self.hooks.expired,
                    events.expired(
                        backoff,
                        message.headers,
                        queue=target_queue,
                        message_id=message.message_id,
                        delay_exchange=self.delay_exchange,
                    ),
                )
            raise

    async def retry(
        self,
        message: AbstractIncomingMessage,
        backoff: Backoff,
        *,
        target_queue: str,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> RetryPlan:
        """Plan the next retry of ``message`` and publish its delayed copy.

        Raises ``Backoff.Expired``, ``BackoffConfigError`` or
        :class:`CopyNotPlaced`. Does not settle ``message``.
        """
        plan = self.plan(message, backoff, target_queue=target_queue)
        await self.publish_copy(message, plan, extra_headers=extra_headers)
        return plan

    async def park(
        self,
        message: AbstractIncomingMessage,
        *,
        queue: str,
        error: BaseException | str,
    ) -> str:
        """Publish ``message`` to ``{queue}.parked``, confirmed.

        The copy keeps body and properties (no expiration) and gains the headers
        ``backoff-error`` (``str(error)``) and ``backoff-queue`` (``queue``). It is
        published first and the queue declared (durable) only if the copy comes
        back unroutable, so an existing parking queue takes it whatever its
        arguments. Returns the parking queue's name; raises :class:`CopyNotPlaced`
        when the broker does not take the copy. Does not settle ``message``.
        """
        properties = self.copy_properties(
            message,
            headers=parked_headers(message.headers, error=str(error), queue=queue),
            expiration=None,
        )
        try:
            parking = await self.parking.park(message.body, properties, queue=queue)
        except CopyNotPlaced as failure:
            self._tell_not_placed(None, queue, message, failure)
            raise
        log.debug("parked a message from queue %r in %r", queue, parking)
        if self.hooks.parked:
            emit(
                self.hooks.parked,
                events.Parked(
                    queue=queue,
                    message_id=message.message_id,
                    parking_queue=parking,
                    reason=str(error),
                ),
            )
        return parking

    async def dead_letter_target_missing(
        self, queue_arguments: Mapping[str, Any] | None
    ) -> str | None:
        """What is missing for the queue's dead-letter exchange to keep a message."""
        return await self.parking.dead_letter_target_missing(queue_arguments)


def _describe_copy(plan: RetryPlan, placement: Placement) -> str:
    """How errors and log lines name a delayed copy (made only when one needs it:
    the formatting is a measurable part of a retry's own work)."""
    return (
        f"the delayed copy of a message for queue {plan.routing_key!r} "
        f"(retry #{plan.retry_number}, {plan.delay_ms} ms "
        f"{placement.describe(plan)})"
    )


_COPY_HEADERS = DelayedPublisher.copy_headers
