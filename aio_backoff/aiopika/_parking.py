"""Keeping a message where a person can see it: ``{queue}.parked``, and the check
that a queue's dead-letter target exists before a message is dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiormq
import aiormq.abc
from aiormq.exceptions import ChannelNotFoundEntity, PublishError

from ..core._topology import parking_queue_name
from ._claims import MessageIdClaims
from ._connection import PublishingConnection
from ._failures import not_placed

__all__ = ["DEAD_LETTER_EXCHANGE", "DEAD_LETTER_ROUTING_KEY", "Parking"]

log = logging.getLogger("aio_backoff").getChild("republish")

DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"
DEAD_LETTER_ROUTING_KEY = "x-dead-letter-routing-key"


class Parking:
    """Publishes parked copies (mandatory, confirmed) on the publisher's connection.

    The copy is published to the default exchange first: an existing
    ``{queue}.parked`` takes it whatever its arguments. Only a copy that comes back
    unroutable declares the queue (durable, no arguments) and is published again.
    """

    def __init__(
        self,
        connection: PublishingConnection,
        claims: MessageIdClaims,
        *,
        confirm_timeout: float,
    ) -> None:
        self.connection = connection
        self.claims = claims
        self.confirm_timeout = confirm_timeout

    async def park(
        self, body: bytes, properties: aiormq.spec.Basic.Properties, *, queue: str
    ) -> str:
        """Publish to ``{queue}.parked``; raise ``CopyNotPlaced`` if not taken."""
        parking = parking_queue_name(queue)
        message_id = properties.message_id
        await self.claims.claim(message_id)
        try:
            channel = await self.connection.channel()
            try:
                await self._publish(channel, body, properties, parking)
            except PublishError:  # no such queue yet
                log.debug("declaring parking queue %r", parking)
                await channel.queue_declare(parking, durable=True)
                await self._publish(channel, body, properties, parking)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise not_placed(
                error,
                f"the parked copy of a message from queue {queue!r} in {parking!r}",
            ) from error
        finally:
            self.claims.release(message_id)
        return parking

    async def _publish(
        self,
        channel: aiormq.abc.AbstractChannel,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        parking: str,
    ) -> None:
        await channel.basic_publish(
            body,
            exchange="",
            routing_key=parking,
            properties=properties,
            mandatory=True,
            timeout=self.confirm_timeout,
        )

    async def dead_letter_target_missing(
        self, arguments: Mapping[str, Any] | None
    ) -> str | None:
        """What is missing for the queue's dead-lettering to keep a message, if any.

        Checks the ``x-dead-letter-exchange`` (or, for the default exchange, the
        queue its ``x-dead-letter-routing-key`` names) with a passive declare on a
        short-lived channel of the publisher's connection. None: it exists (or the
        queue has no dead-letter exchange in its arguments).
        """
        if not arguments or DEAD_LETTER_EXCHANGE not in arguments:
            return None
        exchange = _text(arguments[DEAD_LETTER_EXCHANGE])
        routing_key = _text(arguments.get(DEAD_LETTER_ROUTING_KEY))
        try:
            async with self.connection.scratch_channel() as channel:
                if exchange:
                    await channel.exchange_declare(exchange, passive=True)
                elif routing_key:
                    await channel.queue_declare(routing_key, passive=True)
        except ChannelNotFoundEntity:
            if exchange:
                return f"its dead-letter exchange {exchange!r} does not exist"
            return f"its dead-letter queue {routing_key!r} does not exist"
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)
