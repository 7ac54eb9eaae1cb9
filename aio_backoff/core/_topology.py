"""Names and arguments of the delay exchange and queues, and when to renew them.

The default topology is the one nameko-amqp-retry 0.7.1 declares, so old and new
services can share a broker: a durable headers exchange ``backoff`` and one queue per
delay, ``backoff--{N}ms``, bound with ``{backoff: N, x-match: any}``, whose messages
dead-letter back through the default exchange to the queue named by their routing key.

Nothing here talks to a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._protocol import DELAY_HEADER
from ._renames import UNSET, deprecated, renamed

__all__ = [
    "DEFAULT_DELAY_EXCHANGE",
    "DEFAULT_GRACE_MS",
    "MAX_DELAY_MS",
    "TOPOLOGIES",
    "DelayQueue",
    "LeaseBook",
    "TopologyName",
    "check_topology",
    "delay_queue",
    "delay_queue_name",
    "parking_queue_name",
]

TopologyName = Literal["ladder", "per-delay", "plugin"]
TOPOLOGIES: Final[tuple[TopologyName, ...]] = ("ladder", "per-delay", "plugin")
"""How delayed copies wait (docs/topology.md):

- ``"per-delay"``: one classic queue per delay value, ``backoff--{N}ms``, renewed by
  declaring it again (nameko-amqp-retry 0.7.1's; wire-compatible with it);
- ``"ladder"``: a fixed set of 32 level queues, classic or quorum (:mod:`._ladder`);
- ``"plugin"``: the delayed-message-exchange plugin's ``x-delayed-message`` exchange.
"""


def check_topology(topology: object) -> TopologyName:
    """``topology`` if it names a topology; a ``ValueError`` saying which do."""
    if topology not in TOPOLOGIES:
        msg = (
            f"topology must be one of 'ladder', 'per-delay' or 'plugin', got "
            f"{topology!r} (docs/topology.md says which to pick)"
        )
        raise ValueError(msg)
    return topology


DEFAULT_DELAY_EXCHANGE: Final = "backoff"
"""The headers exchange delayed copies go through (nameko-amqp-retry's)."""
DEFAULT_GRACE_MS: Final = 5000
"""Added to a delay queue's ``x-expires``: how long it outlives its delay
(nameko-amqp-retry's ``EXPIRY_GRACE_PERIOD``)."""

_MAX_EXPIRES_MS: Final = 2**32 - 1
"""RabbitMQ's largest ``x-expires`` and per-message TTL."""

MAX_DELAY_MS: Final = _MAX_EXPIRES_MS - 3_600_000
"""Longest delay: RabbitMQ's TTL limit (2**32 - 1 ms) less room for the grace period."""


def delay_queue_name(delay_ms: int) -> str:
    """``backoff--{delay_ms}ms``."""
    return f"backoff--{delay_ms}ms"


def parking_queue_name(queue: str) -> str:
    """Where expired messages from ``queue`` wait for a person: ``{queue}.parked``."""
    return f"{queue}.parked"


@dataclass(frozen=True, init=False)
class DelayQueue:
    """Everything needed to declare and bind the queue for one delay.

    ``DelayQueue(delay_ms, delay_exchange="backoff", grace_ms=5000)``;
    ``exchange=`` is the deprecated name of ``delay_exchange``.
    """

    delay_ms: int
    delay_exchange: str
    grace_ms: int
    name: str = field(init=False)

    def __init__(
        self,
        delay_ms: int,
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        *,
        exchange: str = UNSET,
    ) -> None:
        delay_exchange = renamed(
            "DelayQueue", "exchange", "delay_exchange", exchange, delay_exchange
        )
        object.__setattr__(self, "delay_ms", delay_ms)
        object.__setattr__(self, "delay_exchange", delay_exchange)
        object.__setattr__(self, "grace_ms", grace_ms)
        self._check()

    def _check(self) -> None:
        if isinstance(self.delay_ms, bool) or not isinstance(self.delay_ms, int):
            msg = f"a delay queue needs a whole number of ms, got {self.delay_ms!r}"
            raise TypeError(msg)
        if not 0 <= self.delay_ms <= MAX_DELAY_MS:
            msg = (
                f"a delay must be between 0 and {MAX_DELAY_MS} ms, got {self.delay_ms}"
            )
            raise ValueError(msg)
        if (
            isinstance(self.grace_ms, bool)
            or not isinstance(self.grace_ms, int)
            or self.grace_ms <= 0
        ):
            msg = (
                "a delay queue's grace period must be a whole number of ms above 0 "
                f"(it outlives its delay by that much), got {self.grace_ms!r}"
            )
            raise ValueError(msg)
        if self.delay_ms + self.grace_ms > _MAX_EXPIRES_MS:
            msg = (
                f"x-expires = delay + grace = {self.delay_ms} + {self.grace_ms} ms "
                f"passes RabbitMQ's limit of {_MAX_EXPIRES_MS} ms; use a shorter "
                "delay or grace period"
            )
            raise ValueError(msg)
        object.__setattr__(self, "name", delay_queue_name(self.delay_ms))

    @property
    def exchange(self) -> str:
        """Deprecated name of :attr:`delay_exchange`."""
        deprecated("DelayQueue.exchange", "DelayQueue.delay_exchange")
        return self.delay_exchange

    @property
    def arguments(self) -> dict[str, Any]:
        """Queue arguments: dead-letter to the default exchange, expire when idle."""
        return {
            "x-expires": self.delay_ms + self.grace_ms,
            "x-dead-letter-exchange": "",
        }

    @property
    def binding_arguments(self) -> dict[str, Any]:
        """Binding to the headers exchange: copies whose ``backoff`` header matches."""
        return {DELAY_HEADER: self.delay_ms, "x-match": "any"}


def delay_queue(
    delay_ms: int,
    *,
    delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
    grace_ms: int = DEFAULT_GRACE_MS,
    exchange: str = UNSET,
) -> DelayQueue:
    """The delay queue for ``delay_ms`` (``exchange=`` is the deprecated name of
    ``delay_exchange``)."""
    delay_exchange = renamed(
        "delay_queue", "exchange", "delay_exchange", exchange, delay_exchange
    )
    return DelayQueue(delay_ms, delay_exchange, grace_ms)


class LeaseBook:
    """Remembers when this process last declared each delay queue.

    A delay queue is deleted by the broker ``delay + grace`` ms after it was last
    declared (publishing does not count as use), and deleting a classic queue deletes
    its messages. A copy published at ``t`` leaves the queue at ``t + delay``, so it
    is safe as long as ``t - last_declare < grace``. We renew (declare again) once
    half the grace period has passed since our own last declare, which leaves the
    other half as margin for a busy broker. Declarations by other processes only
    make the queue live longer, so ignoring them is safe.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._declared_at: dict[tuple[str, str], float] = {}

    def now(self) -> float:
        """The book's clock, in seconds.

        Read it before declaring and pass it to ``declared(queue, at=...)``: a lease
        dated from before its declare never looks fresher than the queue is.
        """
        return self._clock()

    def needs_declare(self, queue: DelayQueue) -> bool:
        """Whether ``queue`` must be declared before a copy is published to it."""
        last = self._declared_at.get((queue.delay_exchange, queue.name))
        if last is None:
            return True
        elapsed_ms = (self._clock() - last) * 1000
        return elapsed_ms >= queue.grace_ms / 2

    def covers(self, queue: DelayQueue) -> bool:
        """Whether a copy confirmed now is sure to have reached ``queue`` in time.

        A copy that entered the queue less than ``grace_ms`` after our last declare
        leaves it before the queue can expire; one confirmed later may have arrived
        too late (a publish held up by flow control or a slow socket) and must be
        published again after a fresh declare. Unknown queues are not covered.
        """
        last = self._declared_at.get((queue.delay_exchange, queue.name))
        if last is None:
            return False
        return (self._clock() - last) * 1000 < queue.grace_ms

    def declared(self, queue: DelayQueue, at: float | None = None) -> None:
        """Record that ``queue`` was declared (at ``at``, or now)."""
        when = self._clock() if at is None else at
        self._declared_at[(queue.delay_exchange, queue.name)] = when

    def forget(self, queue: DelayQueue | None = None) -> None:
        """Forget one queue (or all), so the next publish declares again."""
        if queue is None:
            self._declared_at.clear()
        else:
            self._declared_at.pop((queue.delay_exchange, queue.name), None)
