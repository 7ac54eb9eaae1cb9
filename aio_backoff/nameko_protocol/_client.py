"""An asyncio client for nameko RPC: call nameko services (or a NamekoService).

::

    async with NamekoRpcClient(connection, timeout=30) as rpc:
        total = await rpc.call("orders", "total", order_id=7)
        total = await rpc.service("orders").total(order_id=7)   # the same call

A call publishes ``{"args": [...], "kwargs": {...}}`` to the ``nameko-rpc`` exchange
with routing key ``{service}.{method}``, ``mandatory`` and a publisher confirm (an
unroutable call raises :class:`UnknownService` at once instead of hanging), and waits
on the client's reply queue for the answer with its correlation id. The answer is the
result, or an error raised as :class:`RemoteError`; a method that spent its retries
raises :class:`RemoteExpired`, which is a ``Backoff.Expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, PublishError

from ..aiopika._lifecycle import Lifecycle
from ..aiopika._publisher import DEFAULT_CONFIRM_TIMEOUT_S
from ..core._renames import UNSET, renamed
from ..core.nameko_wire import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    PARENT_CALLS_TRACKED,
    RPC_EXCHANGE,
    RPC_REPLY_QUEUE_TTL_MS,
    RpcTimeout,
    UnknownService,
    decode_reply,
    encode_request,
    rpc_reply_queue_name,
    rpc_routing_key,
)
from ._context import outgoing_headers

__all__ = ["NamekoRpcClient"]

log = logging.getLogger("aio_backoff").getChild("nameko_rpc")


class NamekoRpcClient(Lifecycle):
    """Calls nameko RPC methods over ``connection`` (use a robust connection).

    - ``name``: names the reply queue ``rpc.reply-{name}-{uuid}`` and the call ids
      of calls made outside a handler (``{name}.call.{uuid}``).
    - ``timeout``: seconds to wait for a reply (None waits for ever). A backed-off
      method answers only after its retries: allow for the schedule.
    - ``context_data``: sent as ``nameko.*`` headers with every call (for example
      ``{"user_id": ..., "language": ...}``); inside a :class:`NamekoService`
      handler the handler's own context and call-id stack are sent as well.
    - ``confirm_timeout``: seconds a call waits for the broker's confirm of its
      request before it raises ``TimeoutError`` (default 10).

    Start it with ``async with`` (or :meth:`start` / :meth:`close`).
    """

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        name: str = "aio_rpc_client",
        timeout: float | None = None,
        context_data: Mapping[str, Any] | None = None,
        rpc_exchange: str = RPC_EXCHANGE,
        parent_calls_tracked: int = PARENT_CALLS_TRACKED,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        exchange: str = UNSET,
    ) -> None:
        self.connection = connection
        self.name = name
        self.timeout = timeout
        self.confirm_timeout = confirm_timeout
        self.context_data = dict(context_data or {})
        self.rpc_exchange: str = renamed(
            "NamekoRpcClient", "exchange", "rpc_exchange", exchange, rpc_exchange
        )
        self.parent_calls_tracked = parent_calls_tracked
        self.reply_id = str(uuid.uuid4())
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    @property
    def reply_queue(self) -> str:
        """The name of this client's reply queue."""
        return rpc_reply_queue_name(self.name, self.reply_id)

    async def start(self) -> None:
        """Declare the reply queue and start consuming replies."""
        if self._channel is not None:
            return
        channel = await self.connection.channel(on_return_raises=True)
        try:
            self._exchange = await channel.declare_exchange(
                self.rpc_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(
                self.reply_queue,
                durable=True,
                arguments={"x-expires": RPC_REPLY_QUEUE_TTL_MS},
            )
            await queue.bind(self._exchange, routing_key=self.reply_id)
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await channel.close()
            raise
        self._channel = channel
        log.debug("RPC client %r listening on %r", self.name, self.reply_queue)

    async def close(self) -> None:
        """Stop listening and delete the reply queue; calls still waiting raise
        ``ConnectionError``."""
        channel, self._channel = self._channel, None
        for correlation_id, waiting in self._pending.items():
            if not waiting.done():
                msg = (
                    f"RPC client {self.name!r} was closed while call "
                    f"{correlation_id!r} was waiting for its reply"
                )
                waiting.set_exception(ConnectionError(msg))
        if channel is None or channel.is_closed:
            return
        await channel.close()  # first: calls being published fail now
        with contextlib.suppress(AMQPError, ChannelInvalidStateError):
            # private to this client; it would expire after 5 minutes anyway
            async with self.connection.channel() as cleanup:
                await cleanup.queue_delete(self.reply_queue)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        waiting = self._pending.get(message.correlation_id or "")
        if waiting is None or waiting.done():
            log.debug(
                "reply with unknown correlation id %r on %r (the call timed out?)",
                message.correlation_id,
                self.reply_queue,
            )
            return
        waiting.set_result(message.body)

    async def request(
        self,
        service: str,
        method: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``service.method(*args, **kwargs)`` and return its result.

        Waits up to the client's ``timeout`` (wrap a call in ``asyncio.timeout()``
        for a tighter one).

        Raises :class:`UnknownService` when no service listens, ``TimeoutError``
        when the broker did not confirm the request within ``confirm_timeout``,
        :class:`RpcTimeout` when no reply comes in time, :class:`RemoteError` (or a
        subclass, such as :class:`RemoteExpired`) when the method raised.
        """
        if self._channel is None or self._exchange is None:
            msg = (
                f"RPC client {self.name!r} is not started: use `async with "
                "NamekoRpcClient(...)` or await start() first"
            )
            raise RuntimeError(msg)
        wait_for = self.timeout
        correlation_id = str(uuid.uuid4())
        waiting: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = waiting
        message = aio_pika.Message(
            encode_request(args, kwargs or {}),
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=correlation_id,
            reply_to=self.reply_id,
            headers=outgoing_headers(
                self.name,
                "call",
                self.context_data,
                tracked=self.parent_calls_tracked,
            ),
        )
        routing_key = rpc_routing_key(service, method)
        try:
            try:
                await self._exchange.publish(
                    message,
                    routing_key,
                    mandatory=True,
                    timeout=self.confirm_timeout,
                )
            except PublishError as error:
                raise UnknownService(service) from error
            except (AMQPError, ChannelInvalidStateError):
                if waiting.done():  # close() failed the call while it was sent
                    await waiting
                raise
            try:
                body = await asyncio.wait_for(waiting, wait_for)
            except TimeoutError as error:
                msg = (
                    f"no reply to {routing_key}() within {wait_for} s (correlation "
                    f"id {correlation_id!r}); raise the client's timeout if the "
                    "method backs off for longer"
                )
                raise RpcTimeout(msg) from error
        finally:
            del self._pending[correlation_id]
        return decode_reply(body)

    async def call(
        self, service: str, method: str, /, *args: Any, **kwargs: Any
    ) -> Any:
        """``service.method(*args, **kwargs)`` with the client's timeout."""
        return await self.request(service, method, args, kwargs)

    def service(self, name: str) -> ServiceProxy:
        """A proxy: ``await rpc.service("orders").total(7)``."""
        return ServiceProxy(self, name)


class ServiceProxy:
    """``proxy.method(*args, **kwargs)`` calls ``method`` of one service."""

    def __init__(self, client: NamekoRpcClient, service: str) -> None:
        self._client = client
        self._service = service

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._client.request(self._service, method, args, kwargs)

        call.__name__ = method
        call.__qualname__ = f"{self._service}.{method}"
        return call
