"""aio-pika's RPC pattern with delayed retries: remote methods may raise ``Backoff``.

:class:`BackoffRPC` and :class:`BackoffJsonRPC` are aio-pika's ``RPC`` and ``JsonRPC``
with one change: when a registered method raises :class:`~aio_backoff.Backoff` (or an
exception listed in ``retry_for``), the call message is not answered. A delayed copy
of it (same body, ``reply_to`` and ``correlation_id``) is published through the delay
topology back to the method's queue, with ``mandatory`` and a publisher confirm, and
then the original is acked. The caller keeps waiting on the same future; it gets the
method's result once an attempt succeeds, or ``Backoff.Expired`` once the limit is
spent. Exactly one reply is sent per call: the final one.

Everything else (serialisation, routing, the caller's ``expiration``, replies to
unregistered methods, returned calls) is aio-pika's own behaviour. See docs/rpc.md.
``BackoffJsonRPC`` and its ``Backoff.Expired`` error replies are in :mod:`._jsonrpc`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, Self

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.message import IncomingMessage
from aio_pika.patterns.base import CallbackType, T
from aio_pika.patterns.rpc import RPC

from ..core._backoff import Backoff, BackoffConfigError
from ..core._outcome import FailurePolicy, Outcome, Settle
from ..core._topology import DEFAULT_EXCHANGE, EXPIRY_GRACE_PERIOD_MS, LeaseBook
from ._policy import RetryPolicy
from ._publisher import DEFAULT_CONFIRM_TIMEOUT_S, CopyNotPlaced, DelayedPublisher
from ._renames import UNSET, renamed
from ._settle import TransientFailures

__all__ = ["BackoffRPC"]

log = logging.getLogger("aio_backoff").getChild("rpc")


@dataclass(frozen=True)
class _Call:
    method_name: str
    message: AbstractIncomingMessage


_current_call: contextvars.ContextVar[_Call] = contextvars.ContextVar(
    "aio_backoff_rpc_call"
)
"""The call message being handled; set by ``on_call_message`` for ``execute``.

aio-pika hands every delivery to its own task, so each call sees its own value."""


class _Deferred(BaseException):
    """Leaves aio-pika's ``on_call_message`` without a reply once a retry is handled.

    A ``BaseException`` so that the ``except Exception`` around ``execute`` in
    aio-pika does not turn it into an error reply; ``BackoffRPC.on_call_message``
    catches it and settles the call message: ack when the delayed copy was placed,
    nack with requeue when it was not (nothing is lost).
    """

    def __init__(self, *, placed: bool) -> None:
        super().__init__(placed)
        self.placed = placed


class BackoffRPC(RPC):
    """aio-pika's ``RPC`` whose remote methods may raise ``Backoff`` to be retried.

    Create it like aio-pika's, with the retry policy as keywords::

        rpc = await BackoffRPC.create(channel, backoff=MyBackoff, retry_for=(IOError,))
        await rpc.register("fetch", fetch)                      # the instance policy
        await rpc.register("pay", pay, backoff=PaymentBackoff)  # a per-method one

    - ``backoff``: the ``Backoff`` subclass whose schedule and limit apply to
      ``retry_for`` errors and to a plain ``Backoff()`` raised by a method (a raised
      subclass keeps its own), as in :class:`~aio_backoff.RetryPolicy`.
    - ``retry_for``: exception classes retried as if ``backoff()`` had been raised.
    - ``delay_exchange``, ``grace_ms``, ``lease_book``, ``confirm_timeout``: the
      delay topology, as for :class:`~aio_backoff.DelayedPublisher`; or pass a
      ``publisher`` to share one. ``backoff_exchange=`` is the deprecated name of
      ``delay_exchange`` (``exchange=`` is aio-pika's RPC exchange, as before).
    - ``failure_policy``: pauses and tries for copies that could not be placed
      (:class:`~aio_backoff.FailurePolicy`).

    When a copy cannot be placed for good (or the retry cannot be planned), the
    call is parked in ``{queue}.parked`` with the reason and the caller gets an
    error reply; a transient failure sends the call back to its queue after a
    growing pause.

    The caller's ``await rpc.call(...)`` (or ``rpc.proxy.method(...)``) returns the
    result of the first attempt that succeeds, or raises ``Backoff.Expired`` when the
    limit is spent. The caller's ``expiration`` only bounds the wait before a server
    takes the call, not the retries (docs/rpc.md, "Caller timeouts").
    """

    def __init__(
        self,
        channel: AbstractChannel,
        host_exceptions: bool = False,
        *,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        delay_exchange: str = DEFAULT_EXCHANGE,
        grace_ms: int = EXPIRY_GRACE_PERIOD_MS,
        lease_book: LeaseBook | None = None,
        publisher: DelayedPublisher | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        backoff_exchange: str = UNSET,
    ) -> None:
        super().__init__(channel, host_exceptions)
        self.policy = RetryPolicy(backoff=backoff, retry_for=tuple(retry_for))
        delay_exchange = renamed(
            "BackoffRPC",
            "backoff_exchange",
            "delay_exchange",
            backoff_exchange,
            delay_exchange,
        )
        self.failures = TransientFailures(failure_policy)
        self.publisher = (
            DelayedPublisher(
                channel,
                delay_exchange=delay_exchange,
                grace_ms=grace_ms,
                lease_book=lease_book,
                confirm_timeout=confirm_timeout,
                failure_policy=failure_policy,
            )
            if publisher is None
            else publisher
        )
        self.policies: dict[str, RetryPolicy] = {}
        """routing key (= the method's queue) -> that method's policy"""

    @classmethod
    async def create(
        cls,
        channel: AbstractChannel,
        *,
        host_exceptions: bool | None = None,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        delay_exchange: str = DEFAULT_EXCHANGE,
        grace_ms: int = EXPIRY_GRACE_PERIOD_MS,
        lease_book: LeaseBook | None = None,
        publisher: DelayedPublisher | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        backoff_exchange: str = UNSET,
        **kwargs: Any,
    ) -> Self:
        """Make and initialise one; ``kwargs`` go to aio-pika's ``initialize``."""
        rpc = cls(
            channel,
            backoff=backoff,
            retry_for=retry_for,
            delay_exchange=delay_exchange,
            grace_ms=grace_ms,
            lease_book=lease_book,
            publisher=publisher,
            confirm_timeout=confirm_timeout,
            failure_policy=failure_policy,
            backoff_exchange=backoff_exchange,
        )
        if host_exceptions is not None:
            rpc.host_exceptions = host_exceptions
        await rpc.initialize(**kwargs)
        return rpc

    async def register(
        self,
        method_name: str,
        func: CallbackType[Any],
        *,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """aio-pika's ``register``, with an optional per-method retry policy.

        ``backoff`` / ``retry_for`` replace the instance's for this method only.
        """
        policy = self.policy.override(backoff=backoff, retry_for=retry_for)
        routing_key = self._format_routing_key(method_name)
        if routing_key in self.routes:
            # let aio-pika raise its own error, without touching the live policy
            return await super().register(method_name, func, **kwargs)
        # in place before consuming starts: the first call may arrive at once
        self.policies[routing_key] = policy
        try:
            return await super().register(method_name, func, **kwargs)
        except BaseException:
            self.policies.pop(routing_key, None)
            raise

    async def unregister(self, func: CallbackType[Any]) -> None:
        """aio-pika's ``unregister``; forgets the method's retry policy too."""
        queue = self.queues.get(func)
        await super().unregister(func)
        if queue is not None:
            self.policies.pop(queue.name, None)

    async def close(self) -> None:
        """aio-pika's ``close``, then the publisher's own channel."""
        try:
            await super().close()
        finally:
            await self.publisher.close()

    # -- the call path -----------------------------------------------------------

    async def on_call_message(self, method_name: str, message: IncomingMessage) -> None:
        """aio-pika's handler; a retried call is acked (or requeued) without a reply."""
        publisher = self.publisher
        if not publisher.available:  # the gate: no call runs while copies cannot go
            await publisher.wait_available()
        token = _current_call.set(_Call(method_name, message))
        try:
            await super().on_call_message(method_name, message)
        except _Deferred as deferred:
            if deferred.placed:
                await message.ack()
                self.failures.settled(message)
            else:
                await self._requeue(method_name, message)
        except BaseException:
            if not message.processed:  # cancelled: back on its queue now
                await self._requeue(method_name, message)
            raise
        finally:
            _current_call.reset(token)

    @staticmethod
    async def _requeue(method_name: str, message: IncomingMessage) -> None:
        if message.processed:
            return
        try:
            await message.nack(requeue=True)
        except Exception:
            log.exception(
                "rpc %r call %r: could not requeue the call; the broker redelivers "
                "it when the channel closes",
                method_name,
                message.correlation_id,
            )

    async def execute(self, func: CallbackType[T], payload: dict[str, Any]) -> T:
        """Run the method; on ``Backoff`` (or ``retry_for``) schedule a retry instead.

        Returns the result, raises the method's other errors (aio-pika replies with
        them) and ``Backoff.Expired`` once the limit is spent (replied the same way).
        """
        try:
            return await super().execute(func, payload)
        except Exception as error:
            call = _current_call.get(None)
            if call is None:  # called directly, not for a call message
                raise
            routing_key = self._format_routing_key(call.method_name)
            policy = self.policies.get(routing_key, self.policy)
            backoff = policy.backoff_for(error)
            if backoff is None:
                raise
            await self._retry_later(call, routing_key, backoff)

    async def _retry_later(
        self, call: _Call, routing_key: str, backoff: Backoff
    ) -> NoReturn:
        """Publish the delayed copy and leave without a reply (or raise Expired).

        A planning error (``Backoff.Expired``, or a schedule that returns no
        number) is raised, so aio-pika replies with it. A copy that cannot be
        published, for whatever reason, sends the call back to its queue.
        """
        message = call.message
        queue = self.queues[self.routes[routing_key]].name
        publisher = self.publisher
        try:
            plan = publisher.plan(message, backoff, target_queue=queue)
        except Backoff.Expired as expired:
            log.warning(
                "rpc %r call %r: %s; replying with Backoff.Expired (queue %r)",
                call.method_name,
                message.correlation_id,
                expired,
                queue,
            )
            raise
        except Exception as error:
            reason = f"planning error: {error}"
            await self._failed(call, queue, Outcome.PLANNING_ERROR, reason)
            if isinstance(error, BackoffConfigError):
                raise
            raise BackoffConfigError(reason) from error
        try:
            await publisher.publish_copy(message, plan)
        except CopyNotPlaced as failure:
            await self._failed(call, queue, failure.outcome, str(failure))
            raise
        log.info(
            "rpc %r call %r: retry #%r of %s in %r ms, back to queue %r",
            call.method_name,
            message.correlation_id,
            plan.retry_number,
            "unlimited" if plan.limit is None else plan.limit,
            plan.delay_ms,
            queue,
        )
        raise _Deferred(placed=True)

    async def _failed(
        self, call: _Call, queue: str, outcome: Outcome, reason: str
    ) -> None:
        """Carry out the table for a copy not placed or a planning error.

        Returns once the call is parked (the caller then gets the error reply);
        raises ``_Deferred(placed=False)`` to send it back to its queue after a
        pause instead, with no reply yet.
        """
        message = call.message
        action, tries, pause = self.failures.decide(message, outcome)
        if action.settle is not Settle.REQUEUE_LATER:
            try:
                parking = await self.publisher.park(message, queue=queue, error=reason)
            except CopyNotPlaced as failure:
                await self._failed(
                    call, queue, Outcome.FINAL_ACTION_FAILED, f"{reason}; {failure}"
                )
            else:
                self.failures.settled(message)
                log.log(
                    action.level,
                    "rpc %r call %r: parked in %r, replying with the error (%s): %s",
                    call.method_name,
                    message.correlation_id,
                    parking,
                    outcome,
                    reason,
                )
                return
        log.log(
            action.level,
            "rpc %r call %r goes back to queue %r in %.2f s (%s, try %r): %s",
            call.method_name,
            message.correlation_id,
            queue,
            pause,
            outcome,
            tries,
            reason,
        )
        await asyncio.sleep(pause)
        raise _Deferred(placed=False)
