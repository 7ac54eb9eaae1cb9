"""The plugin topology on aio-pika: an ``x-delayed-message`` exchange.

The exchange (:class:`aio_backoff.core.DelayedExchange`) is declared once; each
target queue is bound to it by its own name before its first copy (and again every
``rebind_s`` seconds). A broker older than the plugin's last release gets a clear
error before anything is declared; a broker without the plugin answers the declare
by closing the connection, and gets the same kind of error.

``x-delay`` is a decimal string (:func:`aio_backoff.core._plugin.x_delay` says why).

The plugin does not support ``mandatory`` (it routes a copy only when its delay is
over), so copies are published without it: a copy whose target queue is gone by
then is dropped by the broker, not returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiormq.abc
from pamqp.commands import Basic

from ..core._outcome import CopyNotPlaced
from ..core._plan import RetryPlan
from ..core._plugin import (
    DELAYED_EXCHANGE_TYPE,
    PLUGIN_DELAY_HEADER,
    DelayedExchange,
    plugin_missing,
    plugin_unsupported,
    x_delay,
)
from ._bindings import BoundTopology
from ._ladder import DEFAULT_REBIND_S
from ._verify import version_of

__all__ = ["PluginPlacement"]

log = logging.getLogger("aio_backoff").getChild("republish")


class PluginPlacement(BoundTopology):
    """The :class:`~aio_backoff.aiopika._placement.Placement` of ``"plugin"``."""

    mandatory = False

    def __init__(
        self,
        delay_exchange: str,
        *,
        rebind_s: float = DEFAULT_REBIND_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rebind_s, clock)
        self.exchange = DelayedExchange(delay_exchange)

    def describe(self, plan: RetryPlan) -> str:
        return f"via the delayed-message exchange {self.exchange.name!r}"

    async def declare_topology(self, channel: aiormq.abc.AbstractChannel) -> None:
        version = version_of(getattr(channel.connection, "server_properties", None))
        unsupported = plugin_unsupported(version)
        if unsupported is not None:
            raise CopyNotPlaced(unsupported, permanent=True)
        try:
            await channel.exchange_declare(
                self.exchange.name,
                exchange_type=DELAYED_EXCHANGE_TYPE,
                durable=True,
                arguments=self.exchange.arguments,
            )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if "exchange type" not in str(error):
                raise
            # the broker closed the whole connection; the next channel reopens it
            raise CopyNotPlaced(
                plugin_missing(version, error), permanent=True
            ) from error

    def target_binding(self, target_queue: str) -> tuple[str, str]:
        return self.exchange.name, self.exchange.routing_key(target_queue)

    def address(self, plan: RetryPlan) -> tuple[str, str]:
        return self.exchange.name, self.exchange.routing_key(plan.routing_key)

    def properties(
        self, properties: Basic.Properties, plan: RetryPlan
    ) -> Basic.Properties:
        properties.expiration = None
        properties.delivery_mode = 2  # persistent
        headers = dict(properties.headers or {})
        headers[PLUGIN_DELAY_HEADER] = x_delay(plan.delay_ms)
        properties.headers = headers
        return properties
