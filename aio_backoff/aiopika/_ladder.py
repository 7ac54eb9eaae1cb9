"""The ladder topology on aio-pika: declared once, then one publish per copy.

The names, arguments and routing come from :class:`aio_backoff.core.Ladder`. The
whole ladder is declared in one go (each declare sent without waiting, then one
round trip to learn whether the broker took them all); each target queue is bound
to the deliver exchange when consuming starts (or before its first copy) and again
every ``rebind_s`` seconds, in case it was deleted and declared again since.
Concurrent copies share one declare and one bind (:mod:`._bindings`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiormq.abc
from aio_pika import Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import (
    AMQPError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    DeliveryError,
)
from pamqp.commands import Basic

from ..core._events import Hooks, tell_replayed
from ..core._ladder import LADDER_LEVELS, Ladder
from ..core._outcome import CopyNotPlaced
from ..core._plan import RetryPlan
from ._bindings import BoundTopology

__all__ = [
    "DEFAULT_REBIND_S",
    "LadderPlacement",
    "Replayed",
    "declare_ladder",
    "replay_undeliverable",
]

log = logging.getLogger("aio_backoff").getChild("republish")

DEFAULT_REBIND_S = 60.0
"""Seconds between two bindings of one target queue by one publisher."""

_PERSISTENT = 2
_CLOSE_REASON_S = 1.0
"""How long a refused declare waits for the channel's close to say why."""


async def declare_ladder(channel: aiormq.abc.AbstractChannel, ladder: Ladder) -> None:
    """Declare every exchange, queue and binding of ``ladder`` (idempotent).

    Raises what the broker answers when it refuses one (a queue that exists with
    other arguments, say), with the channel closed.
    """
    try:
        await _declare_ladder(channel, ladder)
    except ChannelInvalidStateError as error:
        # refused while frames were still going out: the broker's reason, not
        # "channel closed", which would read as a transient failure
        closing = channel.closing
        await asyncio.wait([closing], timeout=_CLOSE_REASON_S)
        refusal = (
            closing.exception() if closing.done() and not closing.cancelled() else None
        )
        if isinstance(refusal, AMQPError):
            raise refusal from error
        raise


async def _declare_ladder(channel: aiormq.abc.AbstractChannel, ladder: Ladder) -> None:
    await channel.exchange_declare(
        ladder.undeliverable, exchange_type="fanout", durable=True
    )
    for level in range(LADDER_LEVELS):
        await channel.exchange_declare(
            ladder.level(level), exchange_type="topic", durable=True, nowait=True
        )
    await channel.exchange_declare(
        ladder.deliver_exchange,
        exchange_type="topic",
        durable=True,
        arguments=ladder.deliver_arguments,
        nowait=True,
    )
    await channel.queue_declare(
        ladder.undeliverable,
        durable=True,
        arguments=ladder.undeliverable_arguments,
        nowait=True,
    )
    for level in range(LADDER_LEVELS):
        await channel.queue_declare(
            ladder.level(level),
            durable=True,
            arguments=ladder.level_arguments(level),
            nowait=True,
        )
    for binding in ladder.bindings():
        if binding.to_exchange:
            await channel.exchange_bind(
                binding.destination,
                binding.source,
                binding.routing_key,
                nowait=True,
            )
        else:
            await channel.queue_bind(
                binding.destination,
                binding.source,
                binding.routing_key,
                nowait=True,
            )
    # one round trip: answered only once the broker has taken everything above
    await channel.exchange_declare(
        ladder.deliver_exchange, exchange_type="topic", passive=True
    )


def inequivalent(ladder: Ladder, error: BaseException) -> str:
    """What to do about a ladder the broker has with other arguments."""
    return (
        f"the broker refused to declare ladder {ladder.prefix!r} ({error}): a queue "
        f"or exchange of that name exists with other arguments, declared by hand, "
        f"by another program or by an earlier aio-backoff (whose classic levels "
        f"were not 'x-queue-mode: lazy'). Once its queues are empty, delete the "
        f"queues and exchanges named {ladder.prefix!r}.* and they are declared "
        f"again; or give this application another delay_exchange"
    )


class LadderPlacement(BoundTopology):
    """The :class:`~aio_backoff.aiopika._placement.Placement` of ``"ladder"``."""

    mandatory = True

    def __init__(
        self,
        ladder: Ladder,
        *,
        rebind_s: float = DEFAULT_REBIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rebind_s, clock)
        self.ladder = ladder
        self._clock = clock

    def describe(self, plan: RetryPlan) -> str:
        return (
            f"via ladder {self.ladder.prefix!r} "
            f"(entering at {self.ladder.entry(plan.delay_ms)!r})"
        )

    async def declare_topology(self, channel: aiormq.abc.AbstractChannel) -> None:
        started = self._clock()
        try:
            await declare_ladder(channel, self.ladder)
        except ChannelPreconditionFailed as error:
            what = inequivalent(self.ladder, error)
            raise CopyNotPlaced(what, permanent=True) from error
        log.debug(
            "declared ladder %r (%d queues) in %.0f ms",
            self.ladder.prefix,
            LADDER_LEVELS + 1,
            (self._clock() - started) * 1000,
        )

    def target_binding(self, target_queue: str) -> tuple[str, str]:
        """The deliver exchange and the key that bind ``target_queue``; a permanent
        :class:`CopyNotPlaced` for a queue the ladder cannot carry copies to."""
        try:
            binding = self.ladder.target_binding(target_queue)
        except ValueError as error:
            raise CopyNotPlaced(str(error), permanent=True) from error
        return binding.source, binding.routing_key

    def address(self, plan: RetryPlan) -> tuple[str, str]:
        ladder = self.ladder
        return (
            ladder.entry(plan.delay_ms),
            ladder.routing_key(plan.delay_ms, plan.routing_key),
        )

    def properties(
        self, properties: Basic.Properties, plan: RetryPlan
    ) -> Basic.Properties:
        # the level queues' TTL is the delay: a per-message one would cut it short
        properties.expiration = None
        properties.delivery_mode = _PERSISTENT
        return properties


@dataclass
class Replayed:
    """What :func:`replay_undeliverable` did."""

    replayed: int = 0
    """Copies delivered to their target queue."""
    kept: int = 0
    """Copies whose target queue is still missing (left in the queue)."""
    unreadable: int = 0
    """Messages without a ladder routing key (left in the queue)."""
    targets: dict[str, int] = field(default_factory=dict)
    """Replayed copies per target queue."""


async def _deliver(
    channel: AbstractChannel, message: AbstractIncomingMessage, target: str
) -> bool:
    """Publish ``message`` to queue ``target``; whether the broker took it there."""
    copy = Message(
        message.body,
        headers=message.headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
    try:
        confirmed = await channel.default_exchange.publish(copy, target, mandatory=True)
    except DeliveryError:  # returned, on a channel with on_return_raises
        return False
    return isinstance(confirmed, Basic.Ack)  # else returned: no such queue yet


async def replay_undeliverable(
    channel: AbstractChannel,
    ladder: Ladder,
    *,
    target_queue: str | None = None,
    limit: int | None = None,
    hooks: Hooks | None = None,
) -> Replayed:
    """Deliver the copies waiting in ``ladder``'s undeliverable queue to their
    target queues, now (their delay is over).

    A copy lands there when its target queue did not exist when its delay ended.
    Each copy is published to its target (named by its routing key) through the
    default exchange, ``mandatory`` and confirmed (``channel`` needs publisher
    confirms, aio-pika's default), then acked; a copy whose target
    is still missing, or a message that is not a ladder copy, stays. Only
    ``target_queue``'s copies with that argument; at most ``limit`` (default: the
    copies there when it starts). ``hooks`` are told of each copy replayed.
    """
    queue = await channel.declare_queue(
        ladder.undeliverable, durable=True, arguments=ladder.undeliverable_arguments
    )
    waiting = queue.declaration_result.message_count or 0
    budget = waiting if limit is None else min(limit, waiting)
    done = Replayed()
    left: list[AbstractIncomingMessage] = []  # held unacked, so get() moves on
    try:
        for _ in range(budget):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                _, target = Ladder.parse_routing_key(message.routing_key or "")
            except ValueError:
                done.unreadable += 1
                left.append(message)
                continue
            if target_queue is not None and target != target_queue:
                left.append(message)
                continue
            if not await _deliver(channel, message, target):
                done.kept += 1
                left.append(message)
                continue
            await message.ack()
            if hooks is not None:
                tell_replayed(
                    hooks,
                    queue=target,
                    message_id=message.message_id,
                    source=ladder.undeliverable,
                )
            done.replayed += 1
            done.targets[target] = done.targets.get(target, 0) + 1
    finally:
        for message in left:  # back where they were, in order
            await message.nack(requeue=True)
    return done
