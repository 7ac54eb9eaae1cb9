"""The ladder and the plugin's exchange, declared with py-amqp (nameko's client).

The names, arguments and routing come from the sans-IO core
(:class:`aio_backoff.core.Ladder`, :class:`aio_backoff.core.DelayedExchange`), so a
nameko service and an asyncio consumer declare the same topology and route copies the
same way. The per-delay queues stay in :mod:`.backoff` (kombu declares them with the
copy, as nameko-amqp-retry did).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from aio_backoff.core import LADDER_LEVELS, CopyNotPlaced, DelayedExchange, Ladder
from aio_backoff.core._plugin import (
    DELAYED_EXCHANGE_TYPE,
    plugin_missing,
    plugin_unsupported,
)

__all__ = ["REBIND_S", "TopologyDeclarer", "declare_ladder"]

REBIND_S = 60.0
"""Seconds between two bindings of one target queue by one publisher."""


def declare_ladder(channel: Any, ladder: Ladder) -> None:
    """Declare every exchange, queue and binding of ``ladder`` on a py-amqp channel.

    py-amqp declares auto-deleting entities unless told otherwise: everything here
    is durable and kept.
    """
    kept = {"durable": True, "auto_delete": False}
    channel.exchange_declare(ladder.undeliverable, "fanout", **kept)
    channel.exchange_declare(
        ladder.deliver_exchange, "topic", arguments=ladder.deliver_arguments, **kept
    )
    for level in range(LADDER_LEVELS):
        channel.exchange_declare(ladder.level(level), "topic", **kept)
    channel.queue_declare(
        ladder.undeliverable, arguments=ladder.undeliverable_arguments, **kept
    )
    for level in range(LADDER_LEVELS):
        channel.queue_declare(
            ladder.level(level), arguments=ladder.level_arguments(level), **kept
        )
    for binding in ladder.bindings():
        if binding.to_exchange:
            channel.exchange_bind(
                binding.destination, binding.source, binding.routing_key
            )
        else:
            channel.queue_bind(binding.destination, binding.source, binding.routing_key)


def _server_version(connection: Any) -> str | None:
    properties = getattr(connection, "server_properties", None) or {}
    version = properties.get("version")
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    return version if isinstance(version, str) else None


class TopologyDeclarer:
    """Declares a ladder or the plugin's exchange once, and binds target queues.

    Shared by the green threads of one container: a lock keeps them from declaring
    the same thing at once. ``connect`` opens a fresh kombu connection (a clone of
    the publisher's); a declare the broker refuses closes only that one.
    """

    def __init__(self, connect: Any, *, rebind_s: float = REBIND_S) -> None:
        self._connect = connect
        self.rebind_s = rebind_s
        self._lock = threading.Lock()
        self._declared: set[str] = set()
        self._bound_at: dict[tuple[str, str], float] = {}

    def forget(self, exchange: str, target_queue: str) -> None:
        """A copy failed: declare and bind again before the next one."""
        self._declared.clear()
        self._bound_at.pop((exchange, target_queue), None)

    def ladder(self, ladder: Ladder, target_queue: str) -> None:
        """Make sure ``ladder`` exists and reaches ``target_queue``."""
        binding = ladder.target_binding(target_queue)
        self._ensure(
            ladder.prefix,
            lambda channel, _: declare_ladder(channel, ladder),
            (binding.source, target_queue, binding.routing_key),
        )

    def plugin(self, exchange: DelayedExchange, target_queue: str) -> None:
        """Make sure the plugin's exchange exists and reaches ``target_queue``."""

        def declare(channel: Any, connection: Any) -> None:
            version = _server_version(connection)
            unsupported = plugin_unsupported(version)
            if unsupported is not None:
                raise CopyNotPlaced(unsupported, permanent=True)
            try:
                channel.exchange_declare(
                    exchange.name,
                    DELAYED_EXCHANGE_TYPE,
                    durable=True,
                    auto_delete=False,
                    arguments=exchange.arguments,
                )
            except Exception as error:
                if "exchange type" not in str(error):
                    raise
                raise CopyNotPlaced(
                    plugin_missing(version, error), permanent=True
                ) from error

        self._ensure(
            exchange.name,
            declare,
            (exchange.name, target_queue, exchange.routing_key(target_queue)),
        )

    def _ensure(self, name: str, declare: Any, binding: tuple[str, str, str]) -> None:
        source, target, key = binding
        now = time.monotonic()
        bound_at = self._bound_at.get((source, target))
        if (
            name in self._declared
            and bound_at is not None
            and now - bound_at < self.rebind_s
        ):
            return
        with self._lock, self._connect() as connection:
            channel = connection.channel()
            if name not in self._declared:
                declare(channel, connection.connection)
                self._declared.add(name)
            channel.queue_bind(target, source, key)
            self._bound_at[(source, target)] = now
