"""Sending the one reply of an RPC request, the way a nameko service sends it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from ..aiopika._publisher import DEFAULT_CONFIRM_TIMEOUT_S
from ..core.nameko_wire import CONTENT_ENCODING, CONTENT_TYPE, encode_reply

__all__ = ["CHANNEL_ERRORS", "ReplySender"]

log = logging.getLogger("aio_backoff").getChild("nameko_service")

CHANNEL_ERRORS = (
    aio_pika.exceptions.MessageProcessError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)
"""What a publish or a settle raises when its channel is gone (or the message was
settled already)."""


class ReplySender:
    """Publishes replies to the RPC exchange on a channel of its own.

    The channel is opened by :meth:`start` and opened again when it was closed, so
    one broken channel does not fail every later reply. A reply waits at most
    ``confirm_timeout`` seconds for the broker's confirm; one that gets none in time
    was not sent (a transient failure of its request).
    """

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        rpc_exchange: str,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
    ) -> None:
        self.connection = connection
        self.rpc_exchange = rpc_exchange
        self.confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    @property
    def channel(self) -> AbstractChannel | None:
        """The channel replies go out on (None before :meth:`start`)."""
        return self._channel

    async def start(self) -> AbstractExchange:
        """Open the channel and declare the RPC exchange (again, if it closed)."""
        exchange = self._exchange
        if exchange is not None and self._channel and not self._channel.is_closed:
            return exchange
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.connection.channel()
                self._exchange = await self._channel.declare_exchange(
                    self.rpc_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            assert self._exchange is not None
            return self._exchange

    async def close(self) -> None:
        channel, self._channel, self._exchange = self._channel, None, None
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def send(
        self,
        request: AbstractIncomingMessage,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
    ) -> bool:
        """Reply to ``request``; False if the reply could not be published.

        A request without ``reply_to`` has nobody to answer: logged, True.
        """
        if not request.reply_to:
            log.warning(
                "RPC request %r has no reply_to: nobody to answer",
                request.correlation_id,
            )
            return True
        reply = aio_pika.Message(
            encode_reply(result, error),
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=request.correlation_id,
        )
        try:
            exchange = await self.start()
            await exchange.publish(
                reply,
                routing_key=request.reply_to,
                mandatory=False,
                timeout=self.confirm_timeout,
            )
        except (*CHANNEL_ERRORS, TimeoutError) as failure:
            log.warning(
                "could not send the reply to RPC request %r: %r",
                request.correlation_id,
                failure,
            )
            return False
        return True
