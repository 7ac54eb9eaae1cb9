"""An asyncio service that speaks nameko's RPC and events, with Backoff.

::

    service = NamekoService(connection, "orders", backoff=UpstreamDown)

    @service.rpc
    async def total(order_id: int) -> int:
        ...                       # may raise Backoff (or a retry_for exception)

    @service.event_handler("payments", "payment_received")
    async def on_payment(payload: dict) -> None:
        ...

    async with service:           # consume until the block ends, then drain
        ...

To nameko this is one more service: ``ClusterRpcProxy``'s ``rpc.orders.total(7)`` and
:class:`~aio_backoff.NamekoRpcClient` reach ``total``; the handler gets the events of
``payments``; the queues have nameko's names and arguments.

Ack policy (as ``nameko_bridge`` does it):

===================  ========================================================
handler outcome      what happens
===================  ========================================================
returns              RPC: reply with the result; ack. Event: ack.
raises Backoff       delayed copy to ``backoff--{N}ms`` (mandatory + confirm),
                     back to the handler's own queue (``rpc-{service}`` with
                     ``nameko.rpc_method_id``; the last call id gains
                     ``.backoff``); then ack. No reply yet.
Backoff expired      RPC: reply with the ``Expired`` error; ack. Event: the
                     handler's ``on_expired`` action (default: park).
copy not placed      nack with requeue (after 0.2 s): tried again, not lost.
other error          RPC: reply with the error; ack. Event: logged; ack (as
                     nameko, whose handlers do not requeue on error).
CancelledError       propagates; the message is not settled (redelivered).
===================  ========================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from ..aiopika._consumer import RetryPolicy
from ..aiopika._expiry import ExpiredMessage, ExpiryAction, park, run_final_action
from ..aiopika._lifecycle import Lifecycle
from ..aiopika._publisher import CopyNotPlaced, DelayedPublisher
from ..core._backoff import Backoff, RetryFor
from ..core._topology import DEFAULT_EXCHANGE
from ..core.nameko_wire import (
    CALL_ID_STACK_HEADER,
    CALL_ID_STACK_KEY,
    CONTENT_ENCODING,
    CONTENT_TYPE,
    HEADER_PREFIX,
    PARENT_CALLS_TRACKED,
    RPC_EXCHANGE,
    RPC_METHOD_ID_HEADER,
    SERVICE_POOL,
    EventQueue,
    HandlerType,
    IncorrectSignature,
    RemoteError,
    backoff_call_id_stack,
    call_id_stack,
    context_data,
    decode_request,
    encode_reply,
    event_queue,
    loads,
    nameko_error,
    new_call_id,
    protocol_error,
    rpc_binding_key,
    rpc_queue_name,
    rpc_routing_key,
    serialize_error,
)
from ._context import CallContext, _current
from ._events import EventDispatcher

__all__ = ["NamekoService"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")

Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)


_SETTLE_ERRORS = (
    aio_pika.exceptions.MessageProcessError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)
"""What settling a message raises when its channel is gone (then the broker
redelivers it) or it was settled already."""

_NOT_PLACED = (CopyNotPlaced, *_SETTLE_ERRORS)
"""What publishing a delayed or parked copy raises when the broker did not take it:
the original goes back to its queue."""

_CONTEXT_PREFIX = f"{HEADER_PREFIX}."
"""Headers with this prefix carry the caller's context (nameko's ``nameko.*``)."""

_REQUEUE_PAUSE_S = 0.2
"""How long a message whose copy could not be placed waits before it goes back to
its queue, so that a broker refusing copies is not asked again in a tight loop."""


@dataclass(frozen=True)
class _Entrypoint:
    method: str
    handler: Handler
    policy: RetryPolicy


@dataclass(frozen=True)
class _EventEntrypoint(_Entrypoint):
    queue: EventQueue


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _check_async(handler: Handler) -> None:
    if not inspect.iscoroutinefunction(handler):
        msg = (
            f"{handler!r} must be an `async def` function to serve nameko calls "
            "and events; wrap blocking code with asyncio.to_thread()"
        )
        raise TypeError(msg)


class NamekoService(Lifecycle):
    """RPC methods and event handlers under a nameko service name.

    - ``backoff``, ``retry_for``: the retry policy, as for
      :class:`~aio_backoff.Retrier`: ``retry_for`` exceptions and a plain
      ``Backoff()`` are retried on ``backoff``'s schedule and limit (a raised
      subclass keeps its own); each entrypoint may override them.
    - ``max_workers``: messages handled at once (the consumer prefetch), as
      nameko's ``max_workers``.
    - ``rpc_exchange``, ``delay_exchange``: the ``nameko-rpc`` and ``backoff``
      exchanges unless a deployment renamed them.
    - ``shutdown_timeout``: seconds :meth:`stop` waits for handlers to finish
      before cancelling them (their messages are then redelivered).

    Use a robust connection (``aio_pika.connect_robust``): queues, bindings and
    consumers are restored after a reconnect, and messages that were in flight
    are redelivered by the broker.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        name: str,
        *,
        backoff: type[Backoff] = Backoff,
        retry_for: RetryFor = (),
        max_workers: int = 10,
        rpc_exchange: str = RPC_EXCHANGE,
        delay_exchange: str = DEFAULT_EXCHANGE,
        parent_calls_tracked: int = PARENT_CALLS_TRACKED,
        shutdown_timeout: float | None = 30.0,
    ) -> None:
        self.connection = connection
        self.name = name
        self.policy = RetryPolicy(backoff=backoff, retry_for=retry_for, on_expired=park)
        self.max_workers = max_workers
        self.rpc_exchange = rpc_exchange
        self.delay_exchange = delay_exchange
        self.parent_calls_tracked = parent_calls_tracked
        self.shutdown_timeout = shutdown_timeout
        self._rpcs: dict[str, _Entrypoint] = {}
        self._events: list[_EventEntrypoint] = []
        self._channel: AbstractChannel | None = None
        self._replies: AbstractExchange | None = None
        self._replies_channel: AbstractChannel | None = None
        self._publisher: DelayedPublisher | None = None
        self._dispatcher = EventDispatcher(
            connection, name=name, parent_calls_tracked=parent_calls_tracked
        )
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._working: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def rpc_queue(self) -> str:
        """``rpc-{name}``: the queue of this service's RPC methods."""
        return rpc_queue_name(self.name)

    # -- registration ------------------------------------------------------------

    @overload
    def rpc(self, handler: H, /) -> H: ...

    @overload
    def rpc(
        self,
        handler: None = None,
        /,
        *,
        name: str | None = None,
        backoff: type[Backoff] | None = None,
        retry_for: RetryFor | None = None,
    ) -> Callable[[H], H]: ...

    def rpc(
        self,
        handler: H | None = None,
        /,
        *,
        name: str | None = None,
        backoff: type[Backoff] | None = None,
        retry_for: RetryFor | None = None,
    ) -> H | Callable[[H], H]:
        """Register an ``async def`` as RPC method ``name`` (default: its name)."""

        def register(handler: H) -> H:
            _check_async(handler)
            method = name or handler.__name__
            self._rpcs[rpc_routing_key(self.name, method)] = _Entrypoint(
                method=method,
                handler=handler,
                policy=self.policy.override(backoff=backoff, retry_for=retry_for),
            )
            return handler

        return register if handler is None else register(handler)

    def event_handler(
        self,
        source_service: str,
        event_type: str,
        *,
        handler_type: HandlerType | str = SERVICE_POOL,
        reliable_delivery: bool = True,
        broadcast_identifier: str | None = None,
        name: str | None = None,
        backoff: type[Backoff] | None = None,
        retry_for: RetryFor | None = None,
        on_expired: ExpiryAction = park,
    ) -> Callable[[H], H]:
        """Register an ``async def (payload)`` for ``source_service``'s events.

        The queue gets the name and flags nameko's ``@event_handler`` gives it for
        the same arguments (``name`` stands for the method name; see
        :func:`~aio_backoff.event_queue`). A backed-off event comes back to that
        queue only. ``on_expired`` is the final action once the retries are spent
        (an expiry action as for :class:`~aio_backoff.Retrier`; default
        :func:`~aio_backoff.park`).
        """

        def register(handler: H) -> H:
            _check_async(handler)
            method = name or handler.__name__
            queue = event_queue(
                source_service,
                event_type,
                service_name=self.name,
                method_name=method,
                handler_type=handler_type,
                reliable_delivery=reliable_delivery,
                broadcast_identifier=broadcast_identifier,
            )
            self._events.append(
                _EventEntrypoint(
                    method=method,
                    handler=handler,
                    policy=self.policy.override(
                        backoff=backoff, retry_for=retry_for, on_expired=on_expired
                    ),
                    queue=queue,
                )
            )
            return handler

        return register

    def event_queues(self) -> list[str]:
        """The names of the event handlers' queues."""
        return [entry.queue.name for entry in self._events]

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Declare the queues and start consuming."""
        if self._channel is not None:
            return
        self._stopping = False
        channel = await self.connection.channel()
        self._channel = channel
        try:
            await channel.set_qos(prefetch_count=self.max_workers)
            self._publisher = DelayedPublisher(
                channel, delay_exchange=self.delay_exchange
            )
            replies = self._replies_channel = await self.connection.channel()
            self._replies = await replies.declare_exchange(
                self.rpc_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            if self._rpcs:
                await self._consume_rpc(channel)
            for entry in self._events:
                await self._consume_events(channel, entry)
            await self._dispatcher.start()
        except BaseException:
            await self._close()
            raise
        log.info(
            "service %r started: rpc %r, event queues %r",
            self.name,
            sorted(entry.method for entry in self._rpcs.values()),
            self.event_queues(),
        )

    async def _consume_rpc(self, channel: AbstractChannel) -> None:
        exchange = await channel.declare_exchange(
            self.rpc_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self.rpc_queue, durable=True)
        await queue.bind(exchange, routing_key=rpc_binding_key(self.name))
        tag = await queue.consume(functools.partial(self._deliver, self._on_rpc))
        self._consumers.append((queue, tag))

    async def _consume_events(
        self, channel: AbstractChannel, entry: _EventEntrypoint
    ) -> None:
        spec = entry.queue
        exchange = await channel.declare_exchange(
            spec.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            spec.name,
            durable=spec.durable,
            auto_delete=spec.auto_delete,
            exclusive=spec.exclusive,
        )
        await queue.bind(exchange, routing_key=spec.routing_key)
        on_event = functools.partial(self._on_event, entry)
        tag = await queue.consume(functools.partial(self._deliver, on_event))
        self._consumers.append((queue, tag))

    async def stop(self) -> None:
        """Stop consuming, let handlers in flight finish, then close.

        Handlers still running after ``shutdown_timeout`` are cancelled; their
        messages are redelivered.
        """
        if self._channel is None:
            return
        self._stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(*_SETTLE_ERRORS):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._working:
            _, late = await asyncio.wait(self._working, timeout=self.shutdown_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning(
                    "service %r: cancelled %r handlers still running after %r s",
                    self.name,
                    len(late),
                    self.shutdown_timeout,
                )
                await asyncio.wait(late)
        await self._close()
        log.info("service %r stopped", self.name)

    async def _close(self) -> None:
        channel, self._channel = self._channel, None
        replies, self._replies_channel = self._replies_channel, None
        self._replies = None
        publisher, self._publisher = self._publisher, None
        await self._dispatcher.close()
        if publisher is not None:
            await publisher.close()
        if replies is not None and not replies.is_closed:
            await replies.close()
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def close(self) -> None:
        """The same as :meth:`stop` (what ``async with`` calls on exit)."""
        await self.stop()

    # -- events out --------------------------------------------------------------

    async def dispatch(self, event_type: str, payload: Any) -> None:
        """Dispatch an event of this service (to ``{name}.events``), confirmed."""
        await self._dispatcher.dispatch(self.name, event_type, payload)

    # -- handling ----------------------------------------------------------------

    async def _deliver(
        self,
        handle: Callable[[AbstractIncomingMessage], Awaitable[None]],
        message: AbstractIncomingMessage,
    ) -> None:
        """The consumer callback: ``handle(message)``, tracked for :meth:`stop`;
        a message that arrives while the service stops goes back to its queue."""
        task = asyncio.current_task()
        assert task is not None  # aiormq runs each delivery in a task
        self._working.add(task)
        try:
            if self._stopping:
                await self._settle(message, requeue=True)
            else:
                await handle(message)
        finally:
            self._working.discard(task)

    def _context(self, message: AbstractIncomingMessage, method: str) -> CallContext:
        headers = message.headers or {}
        data = context_data(
            {
                key: value
                for key, value in headers.items()
                if key.startswith(_CONTEXT_PREFIX) and key != RPC_METHOD_ID_HEADER
            }
        )
        parents = data.pop(CALL_ID_STACK_KEY)
        stack = call_id_stack(
            parents, new_call_id(self.name, method), tracked=self.parent_calls_tracked
        )
        return CallContext(
            service=self.name,
            method=method,
            call_id_stack=tuple(stack),
            data=data,
            headers=dict(headers),
        )

    async def _settle(
        self, message: AbstractIncomingMessage, *, requeue: bool | None = None
    ) -> None:
        """Ack (``requeue`` None) or nack; a settle that cannot happen is logged."""
        try:
            if requeue is None:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except _SETTLE_ERRORS as error:
            log.warning(
                "could not settle message %r (%r); the broker redelivers it if it "
                "was not settled",
                message.message_id,
                error,
            )

    async def _requeue_later(self, message: AbstractIncomingMessage) -> None:
        await asyncio.sleep(_REQUEUE_PAUSE_S)
        await self._settle(message, requeue=True)

    async def _run(
        self, entry: _Entrypoint, context: CallContext, *args: Any, **kwargs: Any
    ) -> tuple[Any, Exception | None]:
        token = _current.set(context)
        try:
            return await entry.handler(*args, **kwargs), None
        except Exception as error:  # noqa: BLE001 - every error has an outcome
            return None, error
        finally:
            _current.reset(token)

    async def _retry(
        self,
        message: AbstractIncomingMessage,
        backoff: Backoff,
        context: CallContext,
        *,
        queue: str,
        what: str,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> Backoff.Expired | None:
        """Publish the delayed copy and ack; the error when the retries are spent.

        The copy carries the call-id stack of ``context`` with ``.backoff`` on this
        call's id, and ``extra_headers``. A copy that cannot be placed puts the
        message back on its queue.
        """
        assert self._publisher is not None  # started
        headers = {
            CALL_ID_STACK_HEADER: backoff_call_id_stack(context.call_id_stack),
            **(extra_headers or {}),
        }
        try:
            plan = await self._publisher.retry(
                message, backoff, target_queue=queue, extra_headers=headers
            )
        except Backoff.Expired as expired:
            return expired
        except _NOT_PLACED:
            log.exception(
                "%s: delayed copy not placed; message requeued in %r s",
                what,
                _REQUEUE_PAUSE_S,
            )
            await self._requeue_later(message)
            return None
        log.info(
            "%s: retry #%r of %s in %r ms via %r back to queue %r",
            what,
            plan.retry_number,
            "unlimited" if plan.limit is None else plan.limit,
            plan.delay_ms,
            plan.delay_queue.name,
            queue,
        )
        await self._settle(message)
        return None

    async def _reply(
        self,
        message: AbstractIncomingMessage,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> None:
        """Send the one reply of an RPC request, then ack it."""
        assert self._replies is not None  # started
        if not message.reply_to:
            log.warning(
                "RPC request %r to %r has no reply_to: nobody to answer",
                message.correlation_id,
                self.name,
            )
        else:
            reply = aio_pika.Message(
                encode_reply(result, error),
                content_type=CONTENT_TYPE,
                content_encoding=CONTENT_ENCODING,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=message.correlation_id,
            )
            try:
                await self._replies.publish(
                    reply, routing_key=message.reply_to, mandatory=False
                )
            except _SETTLE_ERRORS:
                log.exception(
                    "could not send the reply to RPC request %r; requeued to run again",
                    message.correlation_id,
                )
                await self._settle(message, requeue=True)
                return
        await self._settle(message)

    async def _on_rpc(self, message: AbstractIncomingMessage) -> None:
        method_id = (
            _text((message.headers or {}).get(RPC_METHOD_ID_HEADER))
            or message.routing_key
            or ""
        )
        entry = self._rpcs.get(method_id)
        if entry is None:
            method = method_id.rsplit(".", 1)[-1]
            await self._reply(message, error=protocol_error("MethodNotFound", method))
            return
        try:
            args, kwargs = _request(message.body, entry.handler)
        except RemoteError as bad_request:
            await self._reply(message, error=serialize_error(bad_request))
            return
        context = self._context(message, entry.method)
        result, error = await self._run(entry, context, *args, **kwargs)
        if error is None:
            await self._reply(message, result=result)
            return
        what = f"rpc {method_id}"
        backoff = entry.policy.backoff_for(error)
        if backoff is None:
            log.warning("%s raised %r; replying with the error", what, error)
            await self._reply(message, error=serialize_error(error))
            return
        expired = await self._retry(
            message,
            backoff,
            context,
            queue=self.rpc_queue,
            what=what,
            extra_headers={RPC_METHOD_ID_HEADER: method_id},
        )
        if expired is None:
            return
        log.warning("%s: %s; replying with the error", what, expired)
        await self._reply(message, error=serialize_error(expired))

    async def _on_event(
        self, entry: _EventEntrypoint, message: AbstractIncomingMessage
    ) -> None:
        what = f"event handler {self.name}.{entry.method}"
        try:
            payload = loads(message.body)
        except ValueError:
            log.exception("%s: event body is not JSON; acked", what)
            await self._settle(message)
            return
        context = self._context(message, entry.method)
        _, error = await self._run(entry, context, payload)
        if error is None:
            await self._settle(message)
            return
        backoff = entry.policy.backoff_for(error)
        if backoff is None:
            log.error("%s raised %r; acked", what, error, exc_info=error)
            await self._settle(message)
            return
        expired = await self._retry(
            message, backoff, context, queue=entry.queue.name, what=what
        )
        if expired is not None:
            await self._expire_event(entry, message, expired, what=what)

    async def _expire_event(
        self,
        entry: _EventEntrypoint,
        message: AbstractIncomingMessage,
        expired: Backoff.Expired,
        *,
        what: str,
    ) -> None:
        """Run the handler's final action; ack unless the action settled it."""
        assert self._publisher is not None  # started
        try:
            await run_final_action(
                entry.policy.on_expired,
                ExpiredMessage(
                    message=message,
                    queue=entry.queue.name,
                    queue_arguments=None,
                    error=expired,
                    publisher=self._publisher,
                ),
            )
        except _NOT_PLACED:
            log.exception(
                "%s: expired message not placed; requeued in %r s",
                what,
                _REQUEUE_PAUSE_S,
            )
            await self._requeue_later(message)
            return
        if not message.processed:
            await self._settle(message)


def _request(body: bytes, handler: Handler) -> tuple[list[Any], dict[str, Any]]:
    """Decode a request and check that it fits ``handler``.

    Raises nameko's ``MalformedRequest`` or ``IncorrectSignature``.
    """
    args, kwargs = decode_request(body)
    try:
        inspect.signature(handler).bind(*args, **kwargs)
    except TypeError as error:
        raise nameko_error(IncorrectSignature, str(error)) from error
    return args, kwargs
