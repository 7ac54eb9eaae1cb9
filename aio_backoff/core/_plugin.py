"""The plugin topology: RabbitMQ's delayed-message exchange, nameko-amqp-retry's seed.

A copy is published to an ``x-delayed-message`` exchange, ``{delay_exchange}.delayed``
(routing like a direct exchange), with its delay in the ``x-delay`` header; the
plugin holds it for that long and then routes it by its routing key, the target
queue's name, to the queue bound with that key. The plugin is archived and cannot run
on RabbitMQ 4.3 or later; it does not support ``mandatory`` (docs/topology.md).
Nothing here talks to a broker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from ._topology import DEFAULT_DELAY_EXCHANGE

__all__ = [
    "DELAYED_EXCHANGE_TYPE",
    "PLUGIN",
    "PLUGIN_DELAY_HEADER",
    "DelayedExchange",
    "plugin_missing",
    "plugin_unsupported",
    "x_delay",
]

PLUGIN: Final = "rabbitmq_delayed_message_exchange"
DELAYED_EXCHANGE_TYPE: Final = "x-delayed-message"
PLUGIN_DELAY_HEADER: Final = "x-delay"
"""How long the plugin holds the copy, in ms, as a decimal string (see
:func:`x_delay`)."""
_LAST_VERSION: Final = (4, 2)
"""The newest RabbitMQ the plugin runs on."""


def x_delay(delay_ms: int) -> str:
    """The ``x-delay`` header's value for ``delay_ms``: a decimal string.

    Every plugin version since 3.8 converts a string to its delay, exactly, up to
    ``2**32 - 1`` ms. An int is read only in some encodings: pamqp (aio-pika) sends
    one from -128 to 127 as a signed byte, which plugin 4.x ignores, so the copy
    would come back at once. One rule for both stacks: always the string.
    """
    if type(delay_ms) is not int or not 0 <= delay_ms < 2**32:
        msg = (
            f"the plugin holds whole delays from 0 to {2**32 - 1} ms, got {delay_ms!r}"
        )
        raise ValueError(msg)
    return str(delay_ms)


def plugin_unsupported(version: str | None) -> str | None:
    """Why the plugin cannot run on a broker of ``version``, or ``None``."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    if match is None:
        return None
    if (int(match[1]), int(match[2])) > _LAST_VERSION:
        return (
            f"the delayed-message-exchange plugin ({PLUGIN}) cannot run on "
            f"RabbitMQ 4.3 or later, and this broker is {version}; use "
            "topology='ladder' (docs/topology.md)"
        )
    return None


def plugin_missing(version: str | None, error: object) -> str:
    """The error for a broker that refused the ``x-delayed-message`` type."""
    return (
        f"RabbitMQ {version or '(version unknown)'} refused an exchange of type "
        f"{DELAYED_EXCHANGE_TYPE!r} ({error}): the delayed-message-exchange plugin "
        f"is not enabled there. Enable it (rabbitmq-plugins enable {PLUGIN}) or "
        "use topology='ladder' (docs/topology.md)"
    )


@dataclass(frozen=True)
class DelayedExchange:
    """The plugin's exchange: ``DelayedExchange(delay_exchange="backoff")``."""

    delay_exchange: str = DEFAULT_DELAY_EXCHANGE
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.delay_exchange}.delayed")

    @property
    def arguments(self) -> dict[str, Any]:
        """Declare arguments: route like a direct exchange once the delay is over."""
        return {"x-delayed-type": "direct"}

    @staticmethod
    def routing_key(target_queue: str) -> str:
        """Copies are routed by the target queue's name, bound with that key."""
        return target_queue
