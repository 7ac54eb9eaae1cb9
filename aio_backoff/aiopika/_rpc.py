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
import contextlib
import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn, Self

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aio_pika.message import IncomingMessage
from aio_pika.patterns.base import CallbackType, T
from aio_pika.patterns.rpc import RPC, RPCMessageType

from ..core._backoff import Backoff, BackoffConfigError
from ..core._events import Hooks, came_back, emit, retry_fields
from ..core._ladder import QueueType
from ..core._outcome import FailurePolicy, Outcome, Reply, Settle
from ..core._renames import UNSET, renamed
from ..core._topology import (
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    LeaseBook,
    TopologyName,
)
from ._expiry import ExpiryAction, dead_letter_or_park
from ._failures import CopyNotPlaced, failure_outcome
from ._lifecycle import drain
from ._policy import RetryPolicy
from ._publisher import DEFAULT_CONFIRM_TIMEOUT_S, DEFAULT_TOPOLOGY, DelayedPublisher
from ._settle import Delivery, Settling, requeue

__all__ = ["DEFAULT_CLOSE_TIMEOUT_S", "BackoffRPC"]

log = logging.getLogger("aio_backoff").getChild("rpc")

DEFAULT_CLOSE_TIMEOUT_S = 10.0
"""Seconds :meth:`BackoffRPC.close` waits for the calls in flight to be settled."""


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
    """Leaves aio-pika's ``on_call_message`` once the call was settled by the table.

    A ``BaseException`` so that the ``except Exception`` around ``execute`` in
    aio-pika does not turn it into a reply (and an ack); ``BackoffRPC`` has then
    acked the call after its delayed copy was confirmed, or replied with the error
    and kept it, or put it back on its queue.
    """


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
    - ``topology``, ``queue_type``, ``delay_exchange``, ``grace_ms``,
      ``lease_book``, ``confirm_timeout``: the delay topology, as for
      :class:`~aio_backoff.DelayedPublisher`; or pass a ``publisher`` to share
      one. ``backoff_exchange=`` is the deprecated name of ``delay_exchange``
      (``exchange=`` is aio-pika's RPC exchange, as before).
    - ``failure_policy``: pauses and tries for copies that could not be placed
      (:class:`~aio_backoff.FailurePolicy`).
    - ``hooks``: who is told what happens to the copies (:class:`~aio_backoff.Hooks`,
      docs/observability.md); they replace a given ``publisher``'s hooks.
    - ``on_expired``: the final action for a call whose retries are spent, after
      its caller got ``Backoff.Expired`` (default
      :func:`~aio_backoff.dead_letter_or_park`, which parks the call).

    When a copy cannot be placed for good (or the retry cannot be planned), the
    caller gets an error reply and the call is parked in ``{queue}.parked`` with the
    reason (aio-pika's own dead-letter exchange on the method queues answers the
    caller, so it does not keep calls). A transient failure sends the call back to
    its queue after a growing pause.

    The caller's ``await rpc.call(...)`` (or ``rpc.proxy.method(...)``) returns the
    result of the first attempt that succeeds, or raises ``Backoff.Expired`` when the
    limit is spent. The caller's ``expiration`` only bounds the wait before a server
    takes the call, not the retries (docs/rpc.md, "Caller timeouts").

    :meth:`close` stops taking calls and waits for the calls in flight to be
    settled (replied, parked, their delayed copies placed) before it closes.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        host_exceptions: bool = False,
        *,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        topology: TopologyName = DEFAULT_TOPOLOGY,
        queue_type: QueueType = "classic",
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        lease_book: LeaseBook | None = None,
        publisher: DelayedPublisher | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        on_expired: ExpiryAction = dead_letter_or_park,
        backoff_exchange: str = UNSET,
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(channel, host_exceptions)
        self.policy = RetryPolicy(
            backoff=backoff, retry_for=tuple(retry_for), on_expired=on_expired
        )
        delay_exchange = renamed(
            "BackoffRPC",
            "backoff_exchange",
            "delay_exchange",
            backoff_exchange,
            delay_exchange,
        )
        self.publisher = (
            DelayedPublisher(
                channel,
                topology=topology,
                queue_type=queue_type,
                delay_exchange=delay_exchange,
                grace_ms=grace_ms,
                lease_book=lease_book,
                confirm_timeout=confirm_timeout,
                failure_policy=failure_policy,
                hooks=hooks,
            )
            if publisher is None
            else publisher
        )
        if hooks is not None:
            self.publisher.hooks = hooks
        self.settling = Settling(failure_policy, publisher=self.publisher, logger=log)
        """Carries out the ack table's failures for the calls."""
        self.policies: dict[str, RetryPolicy] = {}
        """routing key (= the method's queue) -> that method's policy"""
        self._in_flight: set[asyncio.Task[Any]] = set()
        """The tasks of the calls being handled, until each is settled."""
        self._closing = False
        """Set by :meth:`close`: a call delivered now goes back to its queue."""

    @classmethod
    async def create(
        cls,
        channel: AbstractChannel,
        *,
        host_exceptions: bool | None = None,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        topology: TopologyName = DEFAULT_TOPOLOGY,
        queue_type: QueueType = "classic",
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        lease_book: LeaseBook | None = None,
        publisher: DelayedPublisher | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        on_expired: ExpiryAction = dead_letter_or_park,
        hooks: Hooks | None = None,
        backoff_exchange: str = UNSET,
        **kwargs: Any,
    ) -> Self:
        """Make and initialise one; ``kwargs`` go to aio-pika's ``initialize``."""
        rpc = cls(
            channel,
            hooks=hooks,
            backoff=backoff,
            retry_for=retry_for,
            topology=topology,
            queue_type=queue_type,
            delay_exchange=delay_exchange,
            grace_ms=grace_ms,
            lease_book=lease_book,
            publisher=publisher,
            confirm_timeout=confirm_timeout,
            failure_policy=failure_policy,
            on_expired=on_expired,
            backoff_exchange=backoff_exchange,
        )
        if host_exceptions is not None:
            rpc.host_exceptions = host_exceptions
        await rpc.initialize(**kwargs)
        return rpc

    async def initialize(
        self,
        auto_delete: bool = True,
        durable: bool = False,
        exchange: str = "",
        **kwargs: Any,
    ) -> None:
        """aio-pika's ``initialize``, whose reply queue is exclusive unless it is
        durable (or ``exclusive=`` says otherwise).

        aio-pika declares it non-durable and non-exclusive, which RabbitMQ 4.3
        refuses by default (the deprecated ``transient_nonexcl_queues``: the whole
        connection is closed with 541 INTERNAL_ERROR). The queue is this caller's
        own and consumed exclusively anyway, so on 3.x and 4.0 nothing changes.
        """
        if not durable:
            kwargs.setdefault("exclusive", True)
        self._reopen()
        await super().initialize(
            auto_delete=auto_delete, durable=durable, exchange=exchange, **kwargs
        )

    async def register(
        self,
        method_name: str,
        func: CallbackType[Any],
        *,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        **kwargs: Any,
    ) -> Any:
        """aio-pika's ``register``, with an optional per-method retry policy.

        ``backoff`` / ``retry_for`` / ``on_expired`` replace the instance's for this
        method only. The first registration declares the delay topology
        (:meth:`DelayedPublisher.declare`); each binds its method's queue to it.
        """
        policy = self.policy.override(
            backoff=backoff, retry_for=retry_for, on_expired=on_expired
        )
        self._reopen()
        routing_key = self._format_routing_key(method_name)
        if routing_key in self.routes:
            # let aio-pika raise its own error, without touching the live policy
            return await super().register(method_name, func, **kwargs)
        await self.publisher.declare()
        # in place before consuming starts: the first call may arrive at once
        self.policies[routing_key] = policy
        try:
            registered = await super().register(method_name, func, **kwargs)
        except BaseException:
            self.policies.pop(routing_key, None)
            raise
        # the method's queue exists now: bind it, so its first retries wait for nothing
        await self.publisher.declare(targets=[routing_key])
        return registered

    async def unregister(self, func: CallbackType[Any]) -> None:
        """aio-pika's ``unregister``; forgets the method's retry policy too."""
        queue = self.queues.get(func)
        await super().unregister(func)
        if queue is not None:
            self.policies.pop(queue.name, None)

    async def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:  # noqa: ASYNC109
        """Stop taking calls, let the calls in flight be settled, then close.

        Cancels the method consumers (the methods are unregistered: a call
        delivered after that goes back to its queue unhandled), then waits up to
        ``timeout`` seconds for the calls in flight: their methods, replies,
        delayed copies, parked copies and acks. Calls still in flight after that
        are cancelled, which puts each back on its queue unacked. Then aio-pika's
        ``close`` (the reply queue; callers still waiting get ``CancelledError``)
        and the publisher's own connection. A call that closes its own RPC is not
        waited for.
        """
        if not timeout >= 0:  # also NaN
            msg = (
                f"BackoffRPC.close(timeout=...) must be 0 or more seconds, "
                f"got {timeout!r}"
            )
            raise ValueError(msg)
        self._closing = True
        self.settling.stop_pausing()  # calls waiting out a pause go back now
        try:
            await self._stop_consuming()
            await self._drain(timeout)
            await super().close()
        finally:
            await self.publisher.close()

    def _reopen(self) -> None:
        """Take calls again (an ``initialize`` or ``register`` after a close)."""
        if self._closing:
            self._closing = False
            self.settling.resume()

    async def _stop_consuming(self) -> None:
        """Cancel the method consumers (:meth:`_drain` forgets the methods once
        their calls are settled)."""
        for func, tag in list(self.consumer_tags.items()):
            queue = self.queues[func]
            with contextlib.suppress(Exception):  # its channel may be gone already
                await queue.cancel(tag)
            del self.consumer_tags[func]

    async def _drain(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait up to ``timeout`` s for the calls in flight, cancel the rest (each
        goes back to its queue) and wait for that too; then forget the methods."""
        current = asyncio.current_task()
        pending = [task for task in self._in_flight if task is not current]
        if pending:
            log.debug(
                "closing: waiting up to %r s for %r calls in flight",
                timeout,
                len(pending),
            )
        cancelled = await drain(pending, timeout)
        if cancelled:
            log.warning(
                "closed with %r calls still in flight after %r s: cancelled, each "
                "back on its queue unacked (a parked or delayed copy published "
                "without its confirm yet may be there too)",
                cancelled,
                timeout,
            )
        self.routes.clear()
        self.queues.clear()
        self.policies.clear()

    # -- the call path -----------------------------------------------------------

    async def on_call_message(self, method_name: str, message: IncomingMessage) -> None:
        """aio-pika's handler; a call whose outcome the table carried out (a retry
        placed, a call kept or put back) is left alone afterwards. Each call is in
        flight (:meth:`close` waits for it) until it is settled."""
        queue = self._format_routing_key(method_name)
        if self._closing:  # delivered as its consumer was cancelled
            await requeue(message, queue, logger=log)
            return
        task = asyncio.current_task()
        assert task is not None  # aio-pika runs each delivery in a task of its own
        self._in_flight.add(task)
        try:
            await self._handle_call(method_name, queue, message)
        finally:
            self._in_flight.discard(task)

    async def _handle_call(
        self, method_name: str, queue: str, message: IncomingMessage
    ) -> None:
        publisher = self.publisher
        if not publisher.available:  # the gate: no call runs while copies cannot go
            await publisher.wait_available()
        hooks = publisher.hooks.came_back
        if hooks:
            event = came_back(
                message.headers, queue=queue, message_id=message.message_id
            )
            if event is not None:
                emit(hooks, event)
        token = _current_call.set(_Call(method_name, message))
        try:
            await super().on_call_message(method_name, message)
        except _Deferred:
            pass  # settled as the table said
        except BaseException:
            if not message.processed:  # cancelled: back on its queue now
                await requeue(message, queue, logger=log)
            raise
        finally:
            _current_call.reset(token)

    async def execute(self, func: CallbackType[T], payload: dict[str, Any]) -> T:
        """Run the method; on ``Backoff`` (or ``retry_for``) schedule a retry instead.

        Returns the result and raises the method's other errors (aio-pika replies
        with them). A retry placed, and every outcome the table answers itself
        (expired, a copy not placed, a planning error), leave without a reply from
        aio-pika: the error reply, if any, is sent here.
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
            await self._retry_later(call, routing_key, backoff, policy)

    async def _retry_later(
        self, call: _Call, routing_key: str, backoff: Backoff, policy: RetryPolicy
    ) -> NoReturn:
        """Publish the delayed copy and ack the call without a reply; or carry out
        the table for an expiry, a planning error or a copy not placed."""
        message = call.message
        queue = routing_key  # the method's queue (aio-pika's register names it so)
        delivery = Delivery(
            message=message,
            queue=queue,
            subject=f"rpc {call.method_name!r} call {message.correlation_id!r}",
            # not the queue's arguments: aio-pika's dead-letter exchange (rpc.dlx)
            # sends calls back to their callers, so a kept call is parked
            on_expired=policy.on_expired,
        )
        publisher = self.publisher
        try:
            plan = publisher.plan(message, backoff, target_queue=queue)
        except Backoff.Expired as expired:
            await self._failed(delivery, Outcome.EXPIRED, expired, str(expired))
        except Exception as error:  # noqa: BLE001 - a planning error: replied, kept
            reason = f"planning error: {error}"
            planning = error
            if not isinstance(error, BackoffConfigError):
                planning = BackoffConfigError(reason)
                planning.__cause__ = error
            await self._failed(delivery, Outcome.PLANNING_ERROR, planning, reason)
        try:
            await publisher.publish_copy(message, plan)
        except CopyNotPlaced as failure:
            await self._failed(
                delivery, failure_outcome(failure), failure, str(failure)
            )
        await message.ack()
        self.settling.settled(message, queue)
        log.info(
            "rpc %r call %r: retry #%r of %s in %r ms, back to queue %r",
            call.method_name,
            message.correlation_id,
            plan.retry_number,
            "unlimited" if plan.limit is None else plan.limit,
            plan.delay_ms,
            queue,
            extra=retry_fields(
                queue,
                message.message_id,
                plan.retry_number,
                plan.limit,
                plan.delay_ms,
                outcome="retry placed",
            ),
        )
        raise _Deferred

    async def _failed(
        self, delivery: Delivery, outcome: Outcome, error: Exception, happened: str
    ) -> NoReturn:
        """Carry out the table for ``outcome``: the error reply if it says so, then
        the call is kept (dead-letter or park), given its final action, or sent back
        to its queue after a pause. A reply that cannot be sent is a transient
        failure of the call."""
        settling = self.settling
        decision = settling.decide(delivery, outcome)
        message = delivery.message

        async def reply() -> None:  # kept: the caller hears of it, sent or not
            await self._reply_error(message, error)

        if decision.action.settle is Settle.DEAD_LETTER_OR_PARK:
            # the reply after the parked copy: the caller then finds it there
            with contextlib.suppress(Exception):  # a failed keep: logged, put back
                await settling.carry_out(
                    delivery,
                    decision,
                    happened=happened,
                    replied=True,
                    error=error,
                    before_keeping=reply,
                )
            raise _Deferred
        replied = False
        if decision.action.reply is Reply.ERROR:
            replied = await self._reply_error(message, error)
            if not replied:
                decision = settling.decide(delivery, Outcome.NOT_PLACED_TRANSIENT)
                happened = f"{happened}; its error reply could not be sent"
        with contextlib.suppress(Exception):  # a failed final action: logged, put back
            await settling.carry_out(
                delivery, decision, happened=happened, replied=replied, error=error
            )
        raise _Deferred

    async def _reply_error(
        self, message: AbstractIncomingMessage, error: Exception
    ) -> bool:
        """Send ``error`` to the caller as aio-pika would (its serializers), with a
        confirm timeout; False if it could not be sent."""
        if not message.reply_to:
            return True  # nobody to answer (aio-pika: the same)
        try:
            reply = await self.serialize_message(
                payload=self.serialize_exception(error),
                message_type=RPCMessageType.ERROR,
                correlation_id=message.correlation_id,
                delivery_mode=message.delivery_mode,
            )
            await self.channel.default_exchange.publish(
                reply,
                message.reply_to,
                mandatory=False,
                timeout=self.publisher.confirm_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # noqa: BLE001 - a transient failure of the call
            log.warning(
                "rpc call %r: could not send the error reply (%r)",
                message.correlation_id,
                failure,
            )
            return False
        return True
