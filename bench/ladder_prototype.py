"""A prototype ladder for the benchmark: headers exchanges, chained by alternate
exchanges, instead of topic exchanges matching a 32-word routing key.

Why: in the library's ladder (aio_backoff.core.Ladder) every exchange a copy passes
matches its routing key (32 bit words and the target's words) against topic
patterns, word by word, and a copy passes every level from its entry down to the
deliver exchange: broker CPU per copy grows with the entry level (measured on
3.10: about 0.25 ms per level on this machine, 3-4 ms per copy for delays of a
second, against 0.5 ms for the per-delay topology).

Here the routing key is just the target queue's name, and the copy carries one
header per set bit of its delay (``backoff-bNN: 1``). Level ``i`` is a *headers*
exchange with a single binding, ``{x-match: all, backoff-bNN: 1}``, to its queue
(TTL ``2**i`` ms, dead-lettering to level ``i - 1``'s exchange); a copy without that
header goes on through the exchange's *alternate exchange*, level ``i - 1``'s
exchange. Level 0's alternate and dead-letter exchange is *deliver*, a direct
exchange where each target queue binds by its own name (alternate exchange:
*undeliverable*, as in the library). Same queues (32 levels + undeliverable), same
waits, same entry level; a headers match of one binding and a direct lookup
instead of up to 33 topic matches of a 35-word key.

Benchmark code only (bench/topologies.py ``--prototype``); nothing here is used by
the library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

LEVELS = 32


def bit_header(level: int) -> str:
    return f"backoff-b{level:02d}"


@dataclass(frozen=True)
class HeadersLadder:
    delay_exchange: str
    queue_type: str = "classic"

    @property
    def prefix(self) -> str:
        return f"{self.delay_exchange}.hladder.{self.queue_type}"

    def level(self, level: int) -> str:
        return f"{self.prefix}.{level:02d}"

    @property
    def deliver_exchange(self) -> str:
        return f"{self.prefix}.deliver"

    @property
    def undeliverable(self) -> str:
        return f"{self.prefix}.undeliverable"

    @property
    def queue_names(self) -> list[str]:
        return [*(self.level(i) for i in range(LEVELS)), self.undeliverable]

    @property
    def exchange_names(self) -> list[str]:
        return [
            *(self.level(i) for i in range(LEVELS)),
            self.deliver_exchange,
            self.undeliverable,
        ]

    def entry(self, delay_ms: int) -> str:
        """The level of the delay's highest set bit (deliver for 0)."""
        return (
            self.level(delay_ms.bit_length() - 1) if delay_ms else self.deliver_exchange
        )

    @staticmethod
    def headers(delay_ms: int) -> dict[str, Any]:
        """One header per set bit of the delay."""
        return {
            bit_header(level): 1
            for level in range(delay_ms.bit_length())
            if delay_ms >> level & 1
        }

    def level_arguments(self, level: int) -> dict[str, Any]:
        below = self.deliver_exchange if level == 0 else self.level(level - 1)
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-message-ttl": 2**level,
            "x-dead-letter-exchange": below,
        }
        if self.queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    async def declare(self, channel: AbstractChannel) -> None:
        undeliverable = await channel.declare_exchange(
            self.undeliverable, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(
            self.undeliverable,
            durable=True,
            arguments={"x-queue-type": self.queue_type},
        )
        await queue.bind(undeliverable, "")
        await channel.declare_exchange(
            self.deliver_exchange,
            aio_pika.ExchangeType.DIRECT,
            durable=True,
            arguments={"alternate-exchange": self.undeliverable},
        )
        # lowest first: each level's alternate exchange exists before it
        for level in range(LEVELS):
            below = self.deliver_exchange if level == 0 else self.level(level - 1)
            exchange = await channel.declare_exchange(
                self.level(level),
                aio_pika.ExchangeType.HEADERS,
                durable=True,
                arguments={"alternate-exchange": below},
            )
            queue = await channel.declare_queue(
                self.level(level), durable=True, arguments=self.level_arguments(level)
            )
            await queue.bind(
                exchange, arguments={"x-match": "all", bit_header(level): 1}
            )
