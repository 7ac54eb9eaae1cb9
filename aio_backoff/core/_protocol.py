"""The retry protocol, v1: the headers a delayed copy carries (see docs/protocol.md).

Both stacks (aio-pika and nameko) read and write these through the functions here, so
they cannot drift. Nothing here talks to a broker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "DELAY_HEADER",
    "KEPT_PROPERTIES",
    "LEGACY_DEATH_HEADER",
    "PARKED_ERROR_HEADER",
    "PARKED_QUEUE_HEADER",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "RETRIES_HEADER",
    "delayed_headers",
    "legacy_retries",
    "parked_headers",
    "retries_done",
]

log = logging.getLogger("aio_backoff").getChild("protocol")

PROTOCOL_VERSION: Final = 1

DELAY_HEADER: Final = "backoff"
"""int, ms: the delay of this copy. The delay queue's binding matches on it
(nameko-amqp-retry writes the same header)."""

RETRIES_HEADER: Final = "backoff-retries"
"""int: how many delayed copies of the message have been made, this one included.
Not an ``x-`` header, so RabbitMQ 4.x keeps it when a client republishes."""

PROTOCOL_HEADER: Final = "backoff-protocol"
"""int: the protocol version the writer speaks (1)."""

LEGACY_DEATH_HEADER: Final = "x-death"
"""Written by the broker when a delay queue dead-letters a copy. Read only to carry
on the count of messages that nameko-amqp-retry retried before (it counts from here)."""

PARKED_ERROR_HEADER: Final = "backoff-error"
"""str: why a parked message was parked (the ``Backoff.Expired`` message)."""

PARKED_QUEUE_HEADER: Final = "backoff-queue"
"""str: the queue a parked message was consumed from."""

KEPT_PROPERTIES: Final = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
"""Properties a delayed copy keeps, besides the headers. ``expiration`` is replaced
by the delay; ``user_id`` is dropped because the broker checks it against the
republishing connection's user."""


def _as_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return value
    return None


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def legacy_retries(headers: Mapping[str, Any] | None, exchange: str) -> int:
    """Sum of the ``x-death`` counts for dead-letterings out of ``exchange``'s queues.

    This is how nameko-amqp-retry 0.7.1 counts retries; on RabbitMQ 4.x it never
    passes 1 because the broker resets a republished ``x-death``.
    """
    if not headers:
        return 0
    deaths = headers.get(LEGACY_DEATH_HEADER)
    if not isinstance(deaths, list | tuple):
        return 0
    total = 0
    for death in deaths:
        if not isinstance(death, Mapping):
            continue
        if _as_text(death.get("exchange")) != exchange:
            continue
        count = _as_count(death.get("count"))
        if count is not None:
            total += count
    return total


def retries_done(headers: Mapping[str, Any] | None, exchange: str = "backoff") -> int:
    """How many retries a message has had: ``max(backoff-retries, legacy x-death)``.

    Our own header is authoritative; the legacy count only matters for a message that
    an older nameko-amqp-retry service retried (on RabbitMQ 3.x its ``x-death`` grows
    while our header stays put), so the larger of the two is the truth on every
    broker version. A malformed ``backoff-retries`` is logged and ignored: the next
    copy is written with a valid one.
    """
    ours = 0
    if headers and RETRIES_HEADER in headers:
        raw = headers[RETRIES_HEADER]
        parsed = _as_count(raw)
        if parsed is None:
            log.warning(
                "ignoring malformed %s header %r: expected an int of 0 or more",
                RETRIES_HEADER,
                raw,
            )
        else:
            ours = parsed
    return max(ours, legacy_retries(headers, exchange))


def delayed_headers(
    headers: Mapping[str, Any] | None,
    *,
    delay_ms: int,
    retries: int,
) -> dict[str, Any]:
    """The headers of a delayed copy: the original ones plus the protocol headers.

    ``x-death`` is kept, so that on RabbitMQ 3.x an older nameko-amqp-retry service
    sharing the queue still sees its count grow.
    """
    result = dict(headers or {})
    result[DELAY_HEADER] = delay_ms
    result[RETRIES_HEADER] = retries
    result[PROTOCOL_HEADER] = PROTOCOL_VERSION
    return result


def parked_headers(
    headers: Mapping[str, Any] | None,
    *,
    error: str,
    queue: str,
) -> dict[str, Any]:
    """The headers of a message parked after its retries expired."""
    result = dict(headers or {})
    result[PARKED_ERROR_HEADER] = error
    result[PARKED_QUEUE_HEADER] = queue
    return result
