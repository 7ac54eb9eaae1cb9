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

Its parts, one job each: :mod:`._entrypoints` (what is served),
:mod:`._consumer` (taking messages off the queues; draining on stop),
:mod:`._handling` (one delivery, from message to outcome), :mod:`._settling`
(carrying out the outcome: reply, settle, log), :mod:`._replies` (RPC replies) and
:mod:`._events` (events out). Which outcome a failure is, and carrying it out,
are the aio-pika layer's (:mod:`aio_backoff.aiopika._failures`,
:mod:`aio_backoff.aiopika._settle`), as for ``Retrier`` and ``BackoffRPC``.

Ack policy: the table of :mod:`aio_backoff.core._outcome`, as every executor:

=====================  ======================================================
handler outcome        what happens
=====================  ======================================================
returns                RPC: reply with the result; ack. Event: ack.
raises Backoff         delayed copy to ``backoff--{N}ms`` (mandatory + confirm),
                       back to the handler's own queue; then ack. No reply yet.
Backoff expired        RPC: reply with the ``Expired`` error. Both: the final
                       action (default: park in ``{queue}.parked``).
copy not placed,       back on its queue after a pause that grows with each try
transient              (``failure_policy``); parked at its try limit.
copy not placed,       RPC: reply with the error. Both: dead-lettered (when the
permanent; a bad       queue has a dead-letter exchange in ``queue_arguments``)
Backoff; a body that   or parked with the reason, at once, with one ERROR line.
cannot be decoded
other error            RPC: reply with the error; ack. Event: logged; ack (as
                       nameko, whose handlers do not requeue on error).
CancelledError         back on its queue (``nack(requeue=True)``).
=====================  ======================================================

A request names its method by its routing key; only a delayed copy (it carries
``backoff-retries``) is trusted with ``nameko.rpc_method_id``, which is never
carried on to the calls and events a handler makes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from ..aiopika._expiry import ExpiryAction, park
from ..aiopika._lifecycle import Lifecycle
from ..aiopika._policy import RetryPolicy
from ..aiopika._publisher import DEFAULT_CONFIRM_TIMEOUT_S, DelayedPublisher
from ..core._backoff import Backoff, RetryFor
from ..core._events import Hooks
from ..core._ladder import QueueType
from ..core._outcome import DEFAULT_FAILURE_POLICY, FailurePolicy, Outcome
from ..core._topology import DEFAULT_DELAY_EXCHANGE, TopologyName, check_topology
from ..core.nameko_wire import (
    PARENT_CALLS_TRACKED,
    RPC_EXCHANGE,
    SERVICE_POOL,
    HandlerType,
    event_queue,
    rpc_binding_key,
    rpc_queue_name,
    rpc_routing_key,
)
from ._consumer import QueueConsumer
from ._entrypoints import EventEntrypoint, Handler, RpcEntrypoint, check_async
from ._events import EventDispatcher
from ._handling import EventHandling, RpcHandling
from ._replies import ReplySender
from ._settling import Delivery, Settler

__all__ = ["NamekoService"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")

H = TypeVar("H", bound=Handler)


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
    - ``topology``, ``queue_type``: where delayed copies wait, as for
      :class:`~aio_backoff.DelayedPublisher`. The default is ``"per-delay"``,
      nameko-amqp-retry's, so that 0.7.1 services sharing the queues keep
      counting; pick ``"ladder"`` once none is left (docs/topology.md).
    - ``shutdown_timeout``: seconds :meth:`stop` waits for handlers to finish
      before cancelling them (their messages go back to their queues).
    - ``failure_policy``: how long a copy that could not be placed for a
      transient reason waits before its message goes back to its queue, and after
      how many tries it is parked (:class:`~aio_backoff.core.FailurePolicy`).
    - ``confirm_timeout``: seconds every publish of the service (delayed and
      parked copies, replies, events) waits for the broker's confirm; a reply
      that gets none in time is a transient failure of its request.
    - ``hooks``: who is told what happens to the copies (:class:`~aio_backoff.Hooks`,
      docs/observability.md).
    - ``queue_arguments``: declare arguments of every queue the service consumes
      (nameko declares none; a nameko service sharing a queue must declare the
      same). With ``x-dead-letter-exchange``, messages that cannot be handled are
      dead-lettered there instead of parked.

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
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        topology: TopologyName = "per-delay",
        queue_type: QueueType = "classic",
        parent_calls_tracked: int = PARENT_CALLS_TRACKED,
        shutdown_timeout: float | None = 30.0,
        failure_policy: FailurePolicy = DEFAULT_FAILURE_POLICY,
        queue_arguments: Mapping[str, Any] | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        hooks: Hooks | None = None,
    ) -> None:
        self.connection = connection
        self.hooks = hooks
        """Who is told what happens to the copies (docs/observability.md)."""
        self.name = name
        self.policy = RetryPolicy(backoff=backoff, retry_for=retry_for, on_expired=park)
        self.max_workers = max_workers
        self.rpc_exchange = rpc_exchange
        self.delay_exchange = delay_exchange
        self.topology: TopologyName = check_topology(topology)
        self.queue_type: QueueType = queue_type
        self.parent_calls_tracked = parent_calls_tracked
        self.shutdown_timeout = shutdown_timeout
        self.failure_policy = failure_policy
        self.queue_arguments = dict(queue_arguments or {})
        self.confirm_timeout = confirm_timeout
        self._rpcs: dict[str, RpcEntrypoint] = {}
        self._events: list[EventEntrypoint] = []
        self._replies = ReplySender(
            connection, rpc_exchange=rpc_exchange, confirm_timeout=confirm_timeout
        )
        self._settler = Settler(
            self._replies,
            failure_policy=failure_policy,
            queue_arguments=self.queue_arguments,
        )
        self._consumer = QueueConsumer(
            connection,
            max_workers=max_workers,
            shutdown_timeout=shutdown_timeout,
            queue_arguments=self.queue_arguments,
            on_cancelled=self._hand_back,
        )
        self._publisher: DelayedPublisher | None = None
        self._dispatcher = EventDispatcher(
            connection,
            name=name,
            parent_calls_tracked=parent_calls_tracked,
            confirm_timeout=confirm_timeout,
        )

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
            check_async(handler)
            method = name or handler.__name__
            self._rpcs[rpc_routing_key(self.name, method)] = RpcEntrypoint(
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
            check_async(handler)
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
                EventEntrypoint(
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
        if self._consumer.channel is not None:
            return
        try:
            channel = await self._consumer.open()
            self._publisher = DelayedPublisher(
                channel,
                topology=self.topology,
                queue_type=self.queue_type,
                delay_exchange=self.delay_exchange,
                confirm_timeout=self.confirm_timeout,
                hooks=self.hooks,
            )
            await self._publisher.declare()
            self._settler.start(self._publisher)
            await self._replies.start()
            if self._rpcs:
                await self._consumer.consume_rpc(
                    rpc_exchange=self.rpc_exchange,
                    queue=self.rpc_queue,
                    binding_key=rpc_binding_key(self.name),
                    on_message=self._rpc_handling(),
                )
            events = self._handling(EventHandling)
            for entry in self._events:
                await self._consumer.consume_events(entry.queue, _bound(events, entry))
            # the queues exist now: bind them, so their first retries wait for nothing
            targets = [self.rpc_queue] if self._rpcs else []
            await self._publisher.declare(targets=targets + self.event_queues())
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

    def _handling(self, kind: type[EventHandling]) -> EventHandling:
        return kind(
            self.name,
            self._settler,
            delay_exchange=self.delay_exchange,
            parent_calls_tracked=self.parent_calls_tracked,
        )

    def _rpc_handling(self) -> RpcHandling:
        return RpcHandling(
            self.name,
            self._settler,
            queue=self.rpc_queue,
            entrypoints=self._rpcs,
            on_expired=self.policy.on_expired,
            delay_exchange=self.delay_exchange,
            parent_calls_tracked=self.parent_calls_tracked,
        )

    async def _hand_back(self, message: AbstractIncomingMessage, queue: str) -> None:
        """A message whose handler was cancelled, or that came while stopping."""
        delivery = Delivery(
            message=message,
            queue=queue,
            subject=f"service {self.name} stopping",
            on_expired=self.policy.on_expired,
            rpc=False,
        )
        await self._settler.carry_out(delivery, Outcome.CANCELLED)

    async def stop(self) -> None:
        """Stop taking messages, let handlers in flight finish, then close.

        Messages waiting out a pause go back to their queues at once; handlers
        still running after ``shutdown_timeout`` are cancelled and their messages
        go back to their queues too.
        """
        if self._consumer.channel is None:
            return
        self._settler.stop_pausing()
        self._consumer.shutdown_timeout = self.shutdown_timeout
        late = await self._consumer.stop()
        if late:
            log.warning(
                "service %r: cancelled %r handlers still running after %r s; their "
                "messages are back on their queues",
                self.name,
                late,
                self.shutdown_timeout,
            )
        await self._close()
        log.info("service %r stopped", self.name)

    async def _close(self) -> None:
        publisher, self._publisher = self._publisher, None
        await self._dispatcher.close()
        if publisher is not None:
            await publisher.close()
        await self._replies.close()
        await self._consumer.close()

    async def close(self) -> None:
        """The same as :meth:`stop` (what ``async with`` calls on exit)."""
        await self.stop()

    # -- events out --------------------------------------------------------------

    async def dispatch(self, event_type: str, payload: Any) -> None:
        """Dispatch an event of this service (to ``{name}.events``), confirmed."""
        await self._dispatcher.dispatch(self.name, event_type, payload)


def _bound(
    handling: EventHandling, entry: EventEntrypoint
) -> Callable[[AbstractIncomingMessage], Any]:
    async def on_message(message: AbstractIncomingMessage) -> None:
        await handling(entry, message)

    return on_message
