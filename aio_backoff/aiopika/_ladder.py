"""The ladder topology on aio-pika: declared once, then one publish per copy.

The names, arguments and routing come from :class:`aio_backoff.core.Ladder`. The
whole ladder is declared in one go (each declare sent without waiting, then one
round trip to learn whether the broker took them all); each target queue is bound
to the deliver exchange before its first copy and again every ``rebind_s`` seconds,
in case it was deleted and declared again since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiormq.abc
from pamqp.commands import Basic

from ..core._ladder import LADDER_LEVELS, Ladder
from ..core._plan import RetryPlan

__all__ = ["DEFAULT_REBIND_S", "LadderPlacement", "declare_ladder"]

log = logging.getLogger("aio_backoff").getChild("republish")

DEFAULT_REBIND_S = 60.0
"""Seconds between two bindings of one target queue by one publisher."""

_PERSISTENT = 2


async def declare_ladder(channel: aiormq.abc.AbstractChannel, ladder: Ladder) -> None:
    """Declare every exchange, queue and binding of ``ladder`` (idempotent).

    Raises what the broker answers when it refuses one (a queue that exists with
    other arguments, say), with the channel closed.
    """
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


class LadderPlacement:
    """The :class:`~aio_backoff.aiopika._placement.Placement` of ``"ladder"``."""

    mandatory = True

    def __init__(
        self,
        ladder: Ladder,
        *,
        rebind_s: float = DEFAULT_REBIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ladder = ladder
        self.rebind_s = rebind_s
        self._clock = clock
        self._declared = False
        self._declaring = asyncio.Lock()
        self._bound_at: dict[str, float] = {}

    def describe(self, plan: RetryPlan) -> str:
        return (
            f"via ladder {self.ladder.prefix!r} "
            f"(entering at {self.ladder.entry(plan.delay_ms)!r})"
        )

    async def declare(self, channel: aiormq.abc.AbstractChannel) -> None:
        async with self._declaring:
            started = self._clock()
            await declare_ladder(channel, self.ladder)
            self._declared = True
            log.debug(
                "declared ladder %r (%d queues) in %.0f ms",
                self.ladder.prefix,
                LADDER_LEVELS + 1,
                (self._clock() - started) * 1000,
            )

    async def prepare(
        self, channel: aiormq.abc.AbstractChannel, plan: RetryPlan, *, force: bool
    ) -> None:
        if force or not self._declared:
            await self.declare(channel)
        target = plan.routing_key
        bound_at = self._bound_at.get(target)
        if force or bound_at is None or self._clock() - bound_at >= self.rebind_s:
            binding = self.ladder.target_binding(target)
            started = self._clock()
            await channel.queue_bind(target, binding.source, binding.routing_key)
            self._bound_at[target] = started

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

    def held(self, plan: RetryPlan) -> bool:
        return True

    def forget(self, plan: RetryPlan) -> None:
        self._declared = False
        self._bound_at.pop(plan.routing_key, None)
