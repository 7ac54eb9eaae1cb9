"""One delivery, from message to outcome: decode, run the handler, place a retry.

:class:`RpcHandling` and :class:`EventHandling` turn a message into a call of its
entrypoint's handler and sort what happened into an
:class:`~aio_backoff.core.Outcome`, which the :class:`~._settling.Settler` carries
out. A handler that asks for a retry gets a delayed copy back to its own queue
(``rpc-{service}`` with ``nameko.rpc_method_id``; the last call id gains
``.backoff``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..aiopika._expiry import ExpiryAction
from ..aiopika._failures import failure_outcome
from ..core._backoff import Backoff
from ..core._events import came_back, emit
from ..core._outcome import Outcome
from ..core.nameko_wire import (
    CALL_ID_STACK_HEADER,
    CALL_ID_STACK_KEY,
    HEADER_PREFIX,
    RPC_METHOD_ID_HEADER,
    MalformedRequest,
    RemoteError,
    backoff_call_id_stack,
    call_id_stack,
    context_data,
    decode_request,
    loads,
    nameko_error,
    new_call_id,
    protocol_error,
    rpc_method_id,
    serialize_error,
)
from ._context import CallContext, _current
from ._entrypoints import EventEntrypoint, RpcEntrypoint, bind
from ._settling import Delivery, Settler

__all__ = ["EventHandling", "RpcHandling"]


class _Handling:
    """What RPC and event handling share: the call context, running the handler,
    and placing a retry."""

    def __init__(
        self,
        service: str,
        settler: Settler,
        *,
        delay_exchange: str,
        parent_calls_tracked: int,
    ) -> None:
        self.service = service
        self.settler = settler
        self.delay_exchange = delay_exchange
        self.parent_calls_tracked = parent_calls_tracked

    def context(self, message: AbstractIncomingMessage, method: str) -> CallContext:
        headers = message.headers or {}
        data = context_data(
            {
                key: value
                for key, value in headers.items()
                if key.startswith(f"{HEADER_PREFIX}.")
            }
        )
        parents = data.pop(CALL_ID_STACK_KEY)
        stack = call_id_stack(
            parents,
            new_call_id(self.service, method),
            tracked=self.parent_calls_tracked,
        )
        return CallContext(
            service=self.service,
            method=method,
            call_id_stack=tuple(stack),
            data=data,
            headers=dict(headers),
        )

    def came_back(self, delivery: Delivery) -> None:
        """Tell the hooks when ``delivery`` is a delayed copy that came back."""
        publisher = self.settler.publisher
        if publisher is None or not publisher.hooks.came_back:
            return
        message = delivery.message
        event = came_back(
            message.headers, queue=delivery.queue, message_id=message.message_id
        )
        if event is not None:
            emit(publisher.hooks.came_back, event)

    async def run(
        self, entry: RpcEntrypoint, context: CallContext, *args: Any, **kwargs: Any
    ) -> tuple[Any, Exception | None]:
        publisher = self.settler.publisher
        if publisher is not None and not publisher.available:
            # the gate: no handler runs while its delayed copy could not be placed
            await publisher.wait_available()
        token = _current.set(context)
        try:
            return await entry.handler(*args, **kwargs), None
        except Exception as error:  # noqa: BLE001 - every error has an outcome
            return None, error
        finally:
            _current.reset(token)

    async def failed(
        self,
        delivery: Delivery,
        entry: RpcEntrypoint,
        context: CallContext,
        error: Exception,
        *,
        extra_headers: Mapping[str, Any] | None = None,
    ) -> None:
        """The handler raised ``error``: retry it, or carry out its outcome."""
        try:
            backoff = entry.policy.backoff_for(error)
        except Exception as planning:  # noqa: BLE001 - a bad Backoff subclass
            await self.settler.carry_out(
                delivery, Outcome.PLANNING_ERROR, error=planning
            )
            return
        if backoff is None:
            await self.settler.carry_out(delivery, Outcome.HANDLER_ERROR, error=error)
            return
        publisher = self.settler.publisher
        assert publisher is not None  # started
        headers = {
            CALL_ID_STACK_HEADER: backoff_call_id_stack(context.call_id_stack),
            **(extra_headers or {}),
        }
        try:
            plan = await publisher.retry(
                delivery.message,
                backoff,
                target_queue=delivery.queue,
                extra_headers=headers,
            )
        except Backoff.Expired as expired:
            await self.settler.carry_out(delivery, Outcome.EXPIRED, error=expired)
            return
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # noqa: BLE001 - sorted by failure_outcome
            await self.settler.carry_out(
                delivery, failure_outcome(failure), error=failure
            )
            return
        limit = "unlimited" if plan.limit is None else plan.limit
        await self.settler.carry_out(
            delivery,
            Outcome.RETRY_PLACED,
            detail=(
                f"retry #{plan.retry_number} of {limit} in {plan.delay_ms} ms via "
                f"the {plan.topology} topology back to queue {delivery.queue!r}"
            ),
        )


class RpcHandling(_Handling):
    """Handles the requests on ``rpc-{service}``."""

    def __init__(
        self,
        service: str,
        settler: Settler,
        *,
        queue: str,
        entrypoints: Mapping[str, RpcEntrypoint],
        on_expired: ExpiryAction,
        delay_exchange: str,
        parent_calls_tracked: int,
    ) -> None:
        super().__init__(
            service,
            settler,
            delay_exchange=delay_exchange,
            parent_calls_tracked=parent_calls_tracked,
        )
        self.queue = queue
        self.entrypoints = entrypoints
        self.on_expired = on_expired

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        method_id = rpc_method_id(
            message.headers, message.routing_key, delay_exchange=self.delay_exchange
        )
        delivery = Delivery(
            message=message,
            queue=self.queue,
            subject=f"rpc {method_id}",
            on_expired=self.on_expired,
            rpc=True,
        )
        self.came_back(delivery)
        entry = self.entrypoints.get(method_id)
        if entry is None:
            method = method_id.rsplit(".", 1)[-1]
            await self.settler.carry_out(
                delivery,
                Outcome.HANDLER_ERROR,
                error=LookupError(f"no RPC method {method_id!r}"),
                reply_error=protocol_error("MethodNotFound", method),
            )
            return
        try:
            args, kwargs = decode_request(message.body)
        except MalformedRequest as malformed:
            await self.settler.carry_out(
                delivery,
                Outcome.UNDECODABLE,
                error=malformed,
                reply_error=serialize_error(malformed),
            )
            return
        try:
            bind(entry.handler, args, kwargs)
        except RemoteError as mismatch:
            await self.settler.carry_out(
                delivery, Outcome.HANDLER_ERROR, error=mismatch
            )
            return
        context = self.context(message, entry.method)
        result, error = await self.run(entry, context, *args, **kwargs)
        if error is None:
            await self.settler.carry_out(delivery, Outcome.SUCCEEDED, result=result)
            return
        await self.failed(
            delivery,
            entry,
            context,
            error,
            extra_headers={RPC_METHOD_ID_HEADER: method_id},
        )


class EventHandling(_Handling):
    """Handles the events on one event handler's queue."""

    async def __call__(
        self, entry: EventEntrypoint, message: AbstractIncomingMessage
    ) -> None:
        delivery = Delivery(
            message=message,
            queue=entry.queue.name,
            subject=f"event handler {self.service}.{entry.method}",
            on_expired=entry.policy.on_expired,
            rpc=False,
        )
        self.came_back(delivery)
        try:
            payload = loads(message.body)
        except ValueError as undecodable:
            malformed = nameko_error(MalformedRequest, f"event body {undecodable}")
            await self.settler.carry_out(delivery, Outcome.UNDECODABLE, error=malformed)
            return
        context = self.context(message, entry.method)
        _, error = await self.run(entry, context, payload)
        if error is None:
            await self.settler.carry_out(delivery, Outcome.SUCCEEDED)
            return
        await self.failed(delivery, entry, context, error)
