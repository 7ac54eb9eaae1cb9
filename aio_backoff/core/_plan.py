"""The retry decision: from a raised ``Backoff`` and a message's headers to a plan.

Both stacks ask :func:`plan_retry` what to do and then only carry it out, so a
message retried by an asyncio consumer and by a nameko service is counted and routed
the same way. Nothing here talks to a broker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._backoff import Backoff, BackoffConfigError
from ._ladder import MAX_LADDER_DELAY_MS
from ._protocol import MAX_RETRIES, delayed_headers, retries_done
from ._renames import UNSET, renamed
from ._topology import (
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    DelayQueue,
    TopologyName,
    check_topology,
)

__all__ = ["RetryPlan", "cause_name", "plan_retry"]

_DELAY_QUEUES: dict[tuple[int, str, int], DelayQueue] = {}
"""Checked delay queues by ``(delay_ms, delay_exchange, grace_ms)``: a busy consumer
plans the same few delays over and over."""

_DELAY_QUEUES_MAX = 1024
"""Entries kept before the cache starts over (jittered delays can be many)."""


def _delay_queue(delay_ms: int, delay_exchange: str, grace_ms: int) -> DelayQueue:
    """``DelayQueue(delay_ms, delay_exchange, grace_ms)``, checked once per key."""
    if (
        type(delay_ms) is not int
        or type(grace_ms) is not int
        or type(delay_exchange) is not str
    ):
        # True == 1 and 10.0 == 10 would find another key's queue: build it as given
        return DelayQueue(delay_ms, delay_exchange, grace_ms)
    key = (delay_ms, delay_exchange, grace_ms)
    queue = _DELAY_QUEUES.get(key)
    if queue is None:
        queue = DelayQueue(delay_ms, delay_exchange, grace_ms)
        if len(_DELAY_QUEUES) >= _DELAY_QUEUES_MAX:
            _DELAY_QUEUES.clear()
        _DELAY_QUEUES[key] = queue
    return queue


def _check_delay(delay: object) -> None:
    """What ``DelayQueue`` checks, for the topologies without one."""
    if type(delay) is not int or not 0 <= delay <= MAX_LADDER_DELAY_MS:
        msg = (
            f"a delay must be a whole number of ms from 0 to {MAX_LADDER_DELAY_MS}, "
            f"got {delay!r}"
        )
        raise ValueError(msg)


@dataclass(frozen=True)
class RetryPlan:
    """A delayed copy to publish: for which queue, with which headers, how long.

    With the ``"per-delay"`` topology, publish the body to
    ``delay_queue.delay_exchange`` with ``routing_key``, ``headers`` and a
    per-message expiration of ``delay_ms``; the delay queue dead-letters it back to
    the queue ``routing_key`` names. The other topologies have no ``delay_queue``:
    the ladder (:class:`~aio_backoff.core.Ladder`) or the plugin's exchange says
    where the copy goes.
    """

    delay_ms: int
    retry_number: int
    """1-based: this copy is retry number ``retry_number``."""
    limit: int | None
    routing_key: str
    """The target queue: where the copy comes back."""
    delay_queue: DelayQueue | None
    headers: dict[str, Any]
    topology: TopologyName = "per-delay"
    cause: str = "Backoff"
    """The name of the exception that asked for the retry: the ``Backoff``'s
    ``__cause__`` when it has one (a ``retry_for`` exception), else the
    ``Backoff``'s own class. For observers (docs/observability.md)."""

    @property
    def expiration_ms(self) -> str:
        """The AMQP ``expiration`` property: the delay as a string of ms."""
        return str(self.delay_ms)


def plan_retry(
    backoff: Backoff,
    headers: Mapping[str, Any] | None,
    *,
    target_queue: str,
    delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
    grace_ms: int = DEFAULT_GRACE_MS,
    topology: TopologyName = "per-delay",
    exchange: str = UNSET,
    now_ms: int | None = None,
) -> RetryPlan:
    """Plan the next retry of a message that raised ``backoff``.

    Raises ``Backoff.Expired`` (chained from ``backoff``) when the limit is spent,
    and :class:`~aio_backoff.BackoffConfigError` (a *planning error*: retrying
    cannot help) for anything else that stops the plan: an invalid policy or
    ``delay_ms``, a schedule that raises, an invalid grace period.
    ``target_queue`` is the queue the copy must come back to; ``delay_exchange``
    and ``grace_ms`` name the per-delay topology (``exchange=`` is the deprecated
    name of ``delay_exchange``); ``topology`` is where the copy will wait (see
    :data:`~aio_backoff.core.TOPOLOGIES`). The copy's ``backoff-due`` is
    ``now_ms`` (default: the clock, epoch ms) plus the delay.
    """
    delay_exchange = renamed(
        "plan_retry", "exchange", "delay_exchange", exchange, delay_exchange
    )
    if not isinstance(target_queue, str) or not target_queue:
        msg = (
            "a retry needs the name of the queue the message must come back to; "
            f"got {target_queue!r}"
        )
        raise ValueError(msg)
    per_delay = check_topology(topology) == "per-delay"
    retries = retries_done(headers, delay_exchange)
    try:
        delay = backoff.compute_next(retries)
        queue = _delay_queue(delay, delay_exchange, grace_ms) if per_delay else None
        if queue is None:
            _check_delay(delay)
        limit = backoff.effective_limit()
    except (Backoff.Expired, BackoffConfigError):
        raise
    except Exception as error:
        msg = (
            f"cannot plan retry #{retries + 1} of a message for queue "
            f"{target_queue!r} with {type(backoff).__name__}: {error}"
        )
        raise BackoffConfigError(msg) from error
    following = min(retries + 1, MAX_RETRIES)
    return RetryPlan(
        delay_ms=delay,
        retry_number=following,
        limit=limit,
        routing_key=target_queue,
        delay_queue=queue,
        headers=delayed_headers(
            headers,
            delay_ms=delay,
            retries=following,
            keep_deaths=per_delay,
            due_ms=(time.time_ns() // 1_000_000 if now_ms is None else now_ms) + delay,
        ),
        topology=topology,
        cause=cause_name(backoff),
    )


def cause_name(backoff: BaseException) -> str:
    """The class name of what asked for a retry: ``backoff``'s cause, if any."""
    cause = backoff.__cause__
    return type(backoff if cause is None else cause).__name__
