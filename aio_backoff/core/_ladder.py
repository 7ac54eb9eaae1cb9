"""The delay ladder: a fixed set of level queues that together hold any delay.

Level ``i`` (0 to 31) is a topic exchange and a queue of the same name whose
per-queue TTL is ``2**i`` ms. A copy's routing key is the 32 bits of its delay,
highest first, one word each, then the target queue::

    0.0.(...).1.0.1.orders          delay 5 ms, for queue "orders"

Level ``i``'s exchange sends a key whose bit ``i`` is 1 to its queue, and one whose
bit ``i`` is 0 on to level ``i - 1``'s exchange. Its queue dead-letters to level
``i - 1``'s exchange with the key unchanged; level 0 hands over to the *deliver*
exchange, where each target queue is bound by ``*.*.(32 words).{target}``. A copy
enters at the level of its delay's highest set bit (entering at the top would route
every copy through every exchange), and waits ``2**i`` ms in every level whose bit is
set: the delay, to the millisecond, from at most 32 queues.

A copy the deliver exchange cannot route (its target queue was deleted while it
waited) goes to the alternate exchange and waits in the *undeliverable* queue, where
it can be counted and replayed (the key still names its target), and no level stalls
behind it.

Each queue holds one TTL, so nothing waits behind a longer delay. Classic or quorum
queues: quorum levels dead-letter at-least-once (which needs ``x-overflow:
reject-publish``) and survive losing a cluster node. Nothing here talks to a broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._topology import DEFAULT_DELAY_EXCHANGE

__all__ = [
    "LADDER_LEVELS",
    "MAX_LADDER_DELAY_MS",
    "QUEUE_TYPES",
    "Binding",
    "Ladder",
    "QueueType",
]

LADDER_LEVELS: Final = 32
"""Levels in the ladder: delays up to ``2**32 - 1`` ms."""
MAX_LADDER_DELAY_MS: Final = 2**LADDER_LEVELS - 1
"""Longest delay the ladder holds (RabbitMQ's largest TTL, about 49.7 days)."""

QueueType = Literal["classic", "quorum"]
QUEUE_TYPES: Final[tuple[QueueType, ...]] = ("classic", "quorum")

_MAX_KEY_BYTES: Final = 255
"""AMQP's limit on a routing key (a short string)."""
_BITS_BYTES: Final = 2 * LADDER_LEVELS
"""The 32 bit words and their dots, before the target's name."""
MAX_TARGET_BYTES: Final = _MAX_KEY_BYTES - _BITS_BYTES
"""Longest target queue name (UTF-8 bytes) a ladder key can carry: 191."""
_CLASSIC_ARGUMENTS: Final = {"x-queue-mode": "lazy"}
"""Classic queues keep copies on disk, not in memory. RabbitMQ 3.10 and 3.11 hold
every message of a default-mode classic queue in memory (1,000,000 waiting copies
took about 1.4 GB there, 62 MB lazy); 3.12 and later page classic queues to disk
anyway and accept the argument without a change in behaviour."""


@dataclass(frozen=True)
class Binding:
    """One binding to declare: ``source`` exchange to a queue or an exchange."""

    source: str
    destination: str
    routing_key: str
    to_exchange: bool
    """``destination`` is an exchange (an exchange-to-exchange binding)."""


def _pattern(level: int, bit: str) -> str:
    words = ["*"] * LADDER_LEVELS
    words[LADDER_LEVELS - 1 - level] = bit
    return ".".join([*words, "#"])


@dataclass(frozen=True)
class Ladder:
    """Names, arguments and routing of one ladder.

    ``Ladder(delay_exchange="backoff", queue_type="classic")``: every name starts
    with ``{delay_exchange}.ladder.{queue_type}``, so a classic and a quorum ladder
    (or ladders of two applications) live side by side on one broker.
    """

    delay_exchange: str = DEFAULT_DELAY_EXCHANGE
    queue_type: QueueType = "classic"
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.delay_exchange, str) or not self.delay_exchange:
            msg = (
                "a ladder's names start with the delay exchange's name, which must "
                f"be a non-empty string; got {self.delay_exchange!r}"
            )
            raise ValueError(msg)
        if self.queue_type not in QUEUE_TYPES:
            msg = (
                f"queue_type must be 'classic' or 'quorum', got {self.queue_type!r} "
                "(quorum survives losing a cluster node; see docs/topology.md)"
            )
            raise ValueError(msg)
        object.__setattr__(
            self, "prefix", f"{self.delay_exchange}.ladder.{self.queue_type}"
        )

    # -- names ------------------------------------------------------------------------

    def level(self, level: int) -> str:
        """The exchange and the queue of level ``level``: ``{prefix}.{level:02d}``."""
        return f"{self.prefix}.{level:02d}"

    @property
    def deliver_exchange(self) -> str:
        """The topic exchange level 0 hands copies to; target queues bind to it."""
        return f"{self.prefix}.deliver"

    @property
    def undeliverable(self) -> str:
        """The alternate exchange (fanout) and queue of copies with no target."""
        return f"{self.prefix}.undeliverable"

    @property
    def queue_names(self) -> list[str]:
        """Every queue of the ladder: the levels, then the undeliverable queue."""
        return [*(self.level(i) for i in range(LADDER_LEVELS)), self.undeliverable]

    # -- routing ----------------------------------------------------------------------

    def check_target(self, target_queue: str) -> None:
        """Raise ``ValueError`` when the ladder cannot carry copies for this queue."""
        size = len(target_queue.encode())
        if not target_queue or size > MAX_TARGET_BYTES:
            msg = (
                f"the ladder carries the target queue's name in a routing key, which "
                f"leaves {MAX_TARGET_BYTES} bytes for it; queue {target_queue!r} "
                f"has {size}. Use a shorter queue name or topology='per-delay'"
            )
            raise ValueError(msg)
        if {"*", "#"} & set(target_queue.split(".")):
            msg = (
                f"queue {target_queue!r} has a '*' or '#' word, which a topic binding "
                "would read as a wildcard; the ladder cannot deliver to it. Rename "
                "the queue or use topology='per-delay'"
            )
            raise ValueError(msg)

    def entry(self, delay_ms: int) -> str:
        """The exchange a copy delayed by ``delay_ms`` is published to.

        The level of the delay's highest set bit; the deliver exchange for 0.
        """
        self._check_delay(delay_ms)
        if delay_ms == 0:
            return self.deliver_exchange
        return self.level(delay_ms.bit_length() - 1)

    def routing_key(self, delay_ms: int, target_queue: str) -> str:
        """``{32 bit words}.{target_queue}``: the key a copy is published with."""
        self._check_delay(delay_ms)
        return ".".join(format(delay_ms, "032b")) + "." + target_queue

    @staticmethod
    def parse_routing_key(routing_key: str) -> tuple[int, str]:
        """``(delay_ms, target_queue)`` from a ladder key (for replay and peeking).

        Raises ``ValueError`` for a key the ladder did not make.
        """
        words = routing_key.split(".", LADDER_LEVELS)
        bits = words[:LADDER_LEVELS]
        if len(words) <= LADDER_LEVELS or not set(bits) <= {"0", "1"} or not words[-1]:
            msg = (
                f"{routing_key!r} is not a ladder routing key (32 words of 0 or 1, "
                "then the target queue)"
            )
            raise ValueError(msg)
        return int("".join(bits), 2), words[-1]

    def target_binding(self, target_queue: str) -> Binding:
        """The binding that lets the deliver exchange reach ``target_queue``."""
        self.check_target(target_queue)
        key = ".".join([*("*" * LADDER_LEVELS), target_queue])
        return Binding(self.deliver_exchange, target_queue, key, to_exchange=False)

    @staticmethod
    def _check_delay(delay_ms: int) -> None:
        if type(delay_ms) is not int or not 0 <= delay_ms <= MAX_LADDER_DELAY_MS:
            msg = (
                f"the ladder holds whole delays from 0 to {MAX_LADDER_DELAY_MS} ms, "
                f"got {delay_ms!r}"
            )
            raise ValueError(msg)

    # -- what to declare --------------------------------------------------------------

    def level_arguments(self, level: int) -> dict[str, Any]:
        """Queue arguments of level ``level``: its TTL and where it dead-letters."""
        below = self.deliver_exchange if level == 0 else self.level(level - 1)
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-message-ttl": 2**level,
            "x-dead-letter-exchange": below,
        }
        if self.queue_type == "quorum":
            # at-least-once dead-lettering needs reject-publish overflow; with
            # anything else the broker falls back to at-most-once
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        else:
            arguments.update(_CLASSIC_ARGUMENTS)
        return arguments

    @property
    def undeliverable_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": self.queue_type}
        if self.queue_type == "classic":
            arguments.update(_CLASSIC_ARGUMENTS)
        return arguments

    @property
    def deliver_arguments(self) -> dict[str, Any]:
        """The deliver exchange's: unroutable copies go to the undeliverable queue."""
        return {"alternate-exchange": self.undeliverable}

    def bindings(self) -> list[Binding]:
        """Every binding of the ladder, lowest level first (targets not included)."""
        undeliverable = self.undeliverable
        result = [Binding(undeliverable, undeliverable, "", to_exchange=False)]
        for level in range(LADDER_LEVELS):
            name = self.level(level)
            below = self.deliver_exchange if level == 0 else self.level(level - 1)
            result.append(Binding(name, name, _pattern(level, "1"), to_exchange=False))
            result.append(Binding(name, below, _pattern(level, "0"), to_exchange=True))
        return result
