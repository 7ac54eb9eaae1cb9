"""``BackoffMiddleware``: a ``RabbitBroker``'s handlers under a ``Retrier``'s ack table.

============================  ==========================================================
handler outcome               message
============================  ==========================================================
returns                       FastStream's ack policy (ack; MANUAL: the handler's own)
raises ``Backoff`` (or a      the original's delayed copy published (mandatory +
``retry_for`` exception)      confirm), *then* the original acked; the handler's result
                              and reply are not published
... limit spent               the final action (``on_expired``), then
                              ``Backoff.Expired`` goes on to FastStream, which logs it
... copy not placed           as ``Retrier`` (back on the queue after a pause, or
                              dead-lettered/parked), then the error goes on
raises anything else          FastStream's ack policy (reject, nack, ack or nothing);
                              FastStream's ``AckMessage``, ``NackMessage``, ... are
                              FastStream's, whatever ``retry_for`` says
============================  ==========================================================

A subscriber whose messages are acked before its handler runs (``ACK_FIRST``) is
refused: :meth:`BackoffMiddleware.start` raises ``BackoffConfigError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

from aio_pika.abc import AbstractChannel
from faststream.exceptions import IgnoredException
from faststream.middlewares import BaseMiddleware
from faststream.rabbit import RabbitBroker

from ..aiopika._expiry import ExpiryAction, dead_letter_or_park
from ..aiopika._publisher import DEFAULT_CONFIRM_TIMEOUT_S, DEFAULT_TOPOLOGY
from ..aiopika._retrier import Retrier
from ..core._backoff import Backoff
from ..core._ladder import QueueType
from ..core._outcome import FailurePolicy
from ..core._topology import DEFAULT_DELAY_EXCHANGE, DEFAULT_GRACE_MS, TopologyName
from ._subscribers import (
    check_ack_policy,
    consumed_queue,
    current_subscriber,
    is_exclusive,
    queue_name,
)

__all__ = ["BackoffMiddleware"]


class _Retried(Exception):
    """The handler's ``Backoff`` was placed: ends the handler's call so that
    FastStream publishes no result, and is swallowed by the middleware."""


class BackoffMiddleware:
    """Delayed retries for the subscribers of ``broker`` (it adds itself to it).

    The policy and the topology are ``Retrier``'s, with its defaults:
    ``backoff``, ``retry_for``, ``on_expired``, ``topology`` (``"ladder"``),
    ``queue_type``, ``delay_exchange``, ``grace_ms``, ``confirm_timeout``,
    ``failure_policy``. Call :meth:`start` before the broker starts (a FastStream
    app's ``on_startup``): it refuses subscribers it cannot retry for, opens the
    publisher's connection and declares the topology;
    :meth:`stop` (``on_shutdown``, after the broker) closes that connection.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        *,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        on_expired: ExpiryAction = dead_letter_or_park,
        topology: TopologyName = DEFAULT_TOPOLOGY,
        queue_type: QueueType = "classic",
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
    ) -> None:
        self.broker = broker
        self._settings: dict[str, Any] = {
            "backoff": backoff,
            "retry_for": tuple(retry_for),
            "on_expired": on_expired,
            "topology": topology,
            "queue_type": queue_type,
            "delay_exchange": delay_exchange,
            "grace_ms": grace_ms,
            "confirm_timeout": confirm_timeout,
            "failure_policy": failure_policy,
        }
        self._retrier: Retrier | None = None
        self._channel: AbstractChannel | None = None
        self._starting = asyncio.Lock()
        broker.add_middleware(self)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run (and :meth:`stop` has not)."""
        return self._retrier is not None

    @property
    def retrier(self) -> Retrier:
        """The :class:`~aio_backoff.Retrier` whose table settles the messages
        (once started)."""
        if self._retrier is None:
            msg = "BackoffMiddleware is not started: await middleware.start() first"
            raise RuntimeError(msg)
        return self._retrier

    async def start(self) -> None:
        """Check the broker's subscribers, open the publisher and declare the delay
        topology (each queue is bound to it at its first copy).

        ``BackoffConfigError`` for a subscriber that acks before its handler runs;
        ``ValueError`` for a queue the topology cannot bring copies back to (a
        ladder target with a ``*`` or ``#`` word, an exclusive queue with the
        ladder or the plugin).
        Idempotent; the first message starts it if nobody did.
        """
        async with self._starting:
            if self._retrier is not None:
                return
            queues = []
            for subscriber in self.broker.subscribers:
                check_ack_policy(subscriber)
                queues.append((queue_name(subscriber), is_exclusive(subscriber)))
            connection = await self.broker.connect()
            channel = await connection.channel()
            retrier = Retrier(channel, **self._settings)
            try:
                for queue, exclusive in queues:
                    retrier.publisher.check_target(queue, exclusive=exclusive)
                # the queues may not exist yet (the broker declares them when it
                # starts): each is bound to the topology at its first copy
                await retrier.publisher.declare()
            except BaseException:
                await retrier.close()
                await channel.close()
                raise
            self._retrier, self._channel = retrier, channel

    async def stop(self) -> None:
        """Close the publisher's connection (after the broker stopped consuming)."""
        retrier, self._retrier = self._retrier, None
        channel, self._channel = self._channel, None
        if retrier is not None:
            await retrier.close()
        if channel is not None and not channel.is_closed:
            await channel.close()

    def __call__(self, msg: Any, /, *, context: Any) -> _RetryScope:
        """FastStream's broker middleware factory: one scope per message."""
        return _RetryScope(msg, context=context, owner=self)


class _RetryScope(BaseMiddleware[Any, Any]):
    """One message's pass through :class:`BackoffMiddleware`."""

    def __init__(self, msg: Any, /, *, context: Any, owner: BackoffMiddleware) -> None:
        super().__init__(msg, context=context)
        self.owner = owner

    async def consume_scope(
        self, call_next: Callable[[Any], Awaitable[Any]], msg: Any
    ) -> Any:
        subscriber = current_subscriber(self.context)
        if not self.owner.started:  # nobody called start()
            await self.owner.start()
        check_ack_policy(subscriber)
        processing = self.owner.retrier.process(
            msg.raw_message, queue=consumed_queue(subscriber)
        )
        await processing.gate()
        try:
            return await call_next(msg)
        except IgnoredException:
            raise  # FastStream's own: AckMessage, NackMessage, StopConsume, ...
        except Exception as error:
            backoff = processing.policy.backoff_for(error)
            if backoff is None:
                raise  # FastStream's ack policy settles it
            await processing.retry(backoff)
            raise _Retried from error

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool | None:
        return isinstance(exc_val, _Retried)
