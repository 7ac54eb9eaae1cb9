"""Dispatching nameko events from asyncio.

::

    async with EventDispatcher(connection) as dispatch:
        await dispatch("orders", "order_placed", {"id": 7})

publishes ``{"id": 7}`` as JSON to the topic exchange ``orders.events`` (declared
durable, as nameko declares it) with routing key ``order_placed`` and a publisher
confirm. Every nameko ``@event_handler("orders", "order_placed")`` and every
:meth:`NamekoService.event_handler <aio_backoff.NamekoService.event_handler>` for it
gets the event. Nobody listening is not an error, as in nameko.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from ..aiopika._lifecycle import Lifecycle
from ..aiopika._publisher import DEFAULT_CONFIRM_TIMEOUT_S
from ..core.nameko_wire import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    PARENT_CALLS_TRACKED,
    dumps,
    event_exchange_name,
)
from ._context import outgoing_headers

__all__ = ["EventDispatcher"]


class EventDispatcher(Lifecycle):
    """Dispatches nameko events over ``connection``; call it or use :meth:`dispatch`.

    ``name`` names the call ids of events sent outside a handler
    (``{name}.dispatch.{uuid}``); inside a :class:`~aio_backoff.NamekoService`
    handler, events carry the handler's context and call-id stack. ``context_data``
    is sent as ``nameko.*`` headers with every event. ``confirm_timeout``: seconds
    a dispatch waits for the broker's confirm before it raises ``TimeoutError``.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        *,
        name: str = "aio_event_dispatcher",
        context_data: Mapping[str, Any] | None = None,
        parent_calls_tracked: int = PARENT_CALLS_TRACKED,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
    ) -> None:
        self.connection = connection
        self.name = name
        self.context_data = dict(context_data or {})
        self.parent_calls_tracked = parent_calls_tracked
        self.confirm_timeout = confirm_timeout
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the dispatcher's channel (done by the first dispatch otherwise)."""
        if self._channel is not None and not self._channel.is_closed:
            return  # the usual case, once per dispatch: no lock to take
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.connection.channel()
                self._exchanges.clear()

    async def close(self) -> None:
        """Close the dispatcher's channel."""
        channel, self._channel = self._channel, None
        self._exchanges.clear()
        if channel is not None and not channel.is_closed:
            await channel.close()

    async def _exchange(self, source_service: str) -> AbstractExchange:
        await self.start()
        exchange = self._exchanges.get(source_service)
        if exchange is None:
            assert self._channel is not None  # start() opened it
            exchange = await self._channel.declare_exchange(
                event_exchange_name(source_service),
                aio_pika.ExchangeType.TOPIC,
                durable=True,
            )
            self._exchanges[source_service] = exchange
        return exchange

    async def dispatch(
        self, source_service: str, event_type: str, payload: Any
    ) -> None:
        """Publish ``payload`` as a ``source_service`` event of ``event_type``.

        Returns once the broker confirmed it; raises ``TimeoutError`` when no
        confirm came within ``confirm_timeout``. ``payload`` must be JSON-serializable
        (datetimes, dates, decimals, UUIDs and bytes are sent in kombu's envelopes).
        """
        exchange = await self._exchange(source_service)
        message = aio_pika.Message(
            dumps(payload),
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=outgoing_headers(
                self.name,
                "dispatch",
                self.context_data,
                tracked=self.parent_calls_tracked,
            ),
        )
        await exchange.publish(
            message,
            routing_key=event_type,
            mandatory=False,
            timeout=self.confirm_timeout,
        )

    async def __call__(
        self, source_service: str, event_type: str, payload: Any
    ) -> None:
        await self.dispatch(source_service, event_type, payload)
