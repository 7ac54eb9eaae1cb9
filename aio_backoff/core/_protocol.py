"""The retry protocol, v1: the headers a delayed copy carries (see docs/protocol.md).

Both stacks (aio-pika and nameko) read and write these through the functions here, so
they cannot drift. Nothing here talks to a broker.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import logging
import math
import struct
import time
from collections.abc import Mapping
from typing import Any, Final

from ._renames import UNSET, renamed

__all__ = [
    "DELAY_HEADER",
    "DUE_HEADER",
    "KEPT_PROPERTIES",
    "LEGACY_DEATH_HEADER",
    "MAX_RETRIES",
    "PARKED_ERROR_HEADER",
    "PARKED_QUEUE_HEADER",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "RETRIES_HEADER",
    "delayed_headers",
    "encodable_headers",
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

DUE_HEADER: Final = "backoff-due"
"""int, epoch ms: when this copy is due back (the time it was planned plus its
delay). Read only by observers, for the lateness of a copy that came back;
nameko-amqp-retry ignores it."""

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


MAX_RETRIES: Final = 2**63 - 1
"""The largest retry count: ``backoff-retries`` is a signed 64-bit int on the wire.
A count read as more is read as this, and the next count stays at it."""

# -- what both client libraries can encode again ------------------------------------
#
# pamqp (aio-pika) and py-amqp (kombu, nameko) decode and encode header tables
# differently. A copy is encoded again by whichever stack publishes it, possibly the
# other one, so it carries only values that BOTH encode, and encode faithfully.
# docs/protocol.md, "Headers a copy carries", lists the rules below.

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_KEY_BYTES: Final = 128
"""pamqp truncates a longer field name; py-amqp cannot write one of over 255."""
_MAX_TIMESTAMP: Final = 0xFFFFFFFF
"""pamqp reads a larger timestamp as milliseconds; neither writes a negative one."""
_MAX_DECIMAL_MANTISSA: Final = 2**31 - 1
"""pamqp reads a decimal's mantissa as unsigned, both write it as a signed int32."""
_MAX_DEPTH: Final = 32
"""Tables and arrays nested deeper are dropped."""
_FLOAT32: Final = struct.Struct(">f")
"""pamqp writes every float as a 32-bit float."""
_DROP: Final = object()
_DEATH_TEXT_FIELDS: Final = ("queue", "reason", "exchange")
_MAX_DEATH_COUNT: Final = 2**62
"""Room for the broker to add to an ``x-death`` count without overflowing."""


def _text(raw: bytes | bytearray | memoryview) -> str:
    data = bytes(raw)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "backslashreplace")


def _clean_text(value: str, notes: list[str], path: str) -> str:
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates: py-amqp writes them, pamqp cannot
        notes.append(f"{path}: text with surrogates escaped")
        return value.encode("utf-8", "surrogatepass").decode(
            "utf-8", "backslashreplace"
        )
    return value


def _clean_float(value: float, notes: list[str], path: str) -> Any:
    if not math.isfinite(value):
        return value  # both write nan and inf faithfully
    try:
        exact = _FLOAT32.unpack(_FLOAT32.pack(value))[0] == value
    except OverflowError:
        exact = False
    if exact:
        return value
    notes.append(f"{path}: float {value!r} (not a 32-bit float) sent as text")
    return repr(value)


def _clean_decimal(value: decimal.Decimal, notes: list[str], path: str) -> Any:
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and not sign:
        mantissa = int("".join(map(str, digits)) or "0")
        if 0 < exponent <= 9:
            mantissa, exponent = mantissa * 10**exponent, 0
        if exponent <= 0 and -exponent <= 255 and mantissa <= _MAX_DECIMAL_MANTISSA:
            if value.as_tuple().exponent == exponent:
                return value
            return decimal.Decimal(mantissa)
    notes.append(f"{path}: decimal {value} (not an AMQP decimal) sent as text")
    return str(value)


def _clean_datetime(value: datetime.datetime, notes: list[str], path: str) -> Any:
    aware = value
    if value.utcoffset() is None:  # both libraries read a naive one as UTC
        aware = value.replace(tzinfo=datetime.UTC)
    try:
        seconds = aware.timestamp()
    except (OverflowError, ValueError, OSError):
        seconds = -1.0
    if 0 <= seconds <= _MAX_TIMESTAMP:
        return value
    notes.append(f"{path}: timestamp {value} (outside 1970..2106) sent as text")
    return value.isoformat()


def _clean(value: Any, depth: int, notes: list[str], path: str) -> Any:  # noqa: PLR0911, PLR0912
    """``value`` as both libraries can encode it, or ``_DROP``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return int(value)
        notes.append(f"{path}: int beyond 64 bits sent as text")
        return str(value)
    if isinstance(value, float):
        return _clean_float(value, notes, path)
    if isinstance(value, str):
        return _clean_text(value, notes, path)
    if isinstance(value, bytes | bytearray | memoryview):
        # pamqp cannot write bytes (it reads non-UTF-8 text as bytes), py-amqp
        # cannot write a bytearray (pamqp's byte array): text is what both write
        notes.append(f"{path}: bytes sent as text")
        return _text(value)
    if isinstance(value, decimal.Decimal):
        return _clean_decimal(value, notes, path)
    if isinstance(value, datetime.datetime):
        return _clean_datetime(value, notes, path)
    if isinstance(value, time.struct_time):  # py-amqp cannot write one
        seconds = calendar.timegm(value)
        if 0 <= seconds <= _MAX_TIMESTAMP:
            return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
        notes.append(f"{path}: timestamp outside 1970..2106 dropped")
        return _DROP
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_DEPTH:
        notes.append(f"{path}: nested deeper than {_MAX_DEPTH} levels, dropped")
        return _DROP
    if isinstance(value, Mapping):
        return _clean_table(value, depth + 1, notes, path)
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            cleaned = _clean(item, depth + 1, notes, f"{path}[{index}]")
            if cleaned is not _DROP:
                items.append(cleaned)
        return items
    notes.append(f"{path}: {type(value).__name__} is no AMQP type, dropped")
    return _DROP


def _clean_key(key: Any, notes: list[str], path: str) -> str | None:
    text: str
    if isinstance(key, bytes | bytearray):
        text = _text(key)
    elif isinstance(key, str):
        text = _clean_text(key, notes, path)
    else:
        notes.append(f"{path}: key {key!r} is not text, dropped")
        return None
    if len(text) > _MAX_KEY_BYTES // 4 and len(text.encode()) > _MAX_KEY_BYTES:
        notes.append(f"{path}: key longer than {_MAX_KEY_BYTES} bytes, dropped")
        return None
    return text


def _clean_table(
    table: Mapping[Any, Any], depth: int, notes: list[str], path: str
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for raw_key, value in table.items():
        where = f"{path}.{raw_key!r}" if path else repr(raw_key)
        key = _clean_key(raw_key, notes, where)
        if key is None:
            continue
        cleaned = _clean(value, depth, notes, where)
        if cleaned is not _DROP:
            result[key] = cleaned
    return result


def _well_formed_death(death: Any) -> bool:
    if not isinstance(death, dict):
        return False
    count = death.get("count")
    keys = death.get("routing-keys", [])
    when = death.get("time")
    return (
        isinstance(count, int)
        and not isinstance(count, bool)
        and 0 <= count <= _MAX_DEATH_COUNT
        and all(isinstance(death.get(name), str) for name in _DEATH_TEXT_FIELDS)
        and isinstance(keys, list)
        and all(isinstance(key, str) for key in keys)
        and (when is None or isinstance(when, datetime.datetime))
        and isinstance(death.get("original-expiration", ""), str)
    )


def _well_formed_deaths(deaths: Any) -> bool:
    """Whether ``deaths`` is an ``x-death`` RabbitMQ's dead-lettering can update.

    RabbitMQ 3.10 crashes the dead-lettering queue (``function_clause`` in
    ``rabbit_dead_letter``) on an ``x-death`` that is not a list of tables, or whose
    ``count`` is not an integer; it compares ``queue``, ``reason`` and ``exchange``
    as strings.
    """
    return (
        isinstance(deaths, list)
        and bool(deaths)
        and all(_well_formed_death(death) for death in deaths)
    )


def _plain(value: Any) -> bool:
    """The common header values, which need no cleaning (checked fast)."""
    kind = type(value)
    if kind is str:
        return value.isascii()  # type: ignore[no-any-return]
    if kind is int:
        return _INT64_MIN <= value <= _INT64_MAX  # type: ignore[no-any-return]
    return value is None or kind is bool


def encodable_headers(headers: Mapping[Any, Any] | None) -> dict[str, Any]:
    """``headers`` with only what both pamqp and py-amqp can encode again.

    A value either library cannot write (or would change) is converted where a
    faithful form exists and dropped otherwise; ``x-death`` is dropped unless it is
    well formed. docs/protocol.md lists each case. Changes are logged at WARNING,
    one line per call.
    """
    if not headers:
        return {}
    result: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in headers.items():
        clean_key: str | None
        if type(key) is str and len(key) <= _MAX_KEY_BYTES // 4 and key.isascii():
            if _plain(value):
                result[key] = value
                continue
            clean_key = key
        else:
            clean_key = _clean_key(key, notes, repr(key))
        if clean_key is None:
            continue
        cleaned = _clean(value, 0, notes, repr(clean_key))
        if cleaned is not _DROP:
            result[clean_key] = cleaned
    deaths = result.get(LEGACY_DEATH_HEADER)
    if deaths is not None and not _well_formed_deaths(deaths):
        del result[LEGACY_DEATH_HEADER]
        notes.append(
            f"{LEGACY_DEATH_HEADER!r}: not a list of tables with integer counts "
            "and text queue, reason and exchange, dropped"
        )
    if notes:
        log.warning("headers changed to stay encodable: %s", "; ".join(notes))
    return result


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
    return min(int(value), MAX_RETRIES)


def legacy_retries(
    headers: Mapping[str, Any] | None,
    delay_exchange: str = "backoff",
    *,
    exchange: str = UNSET,
) -> int:
    """Sum of the ``x-death`` counts for dead-letterings out of ``delay_exchange``'s
    queues.

    This is how nameko-amqp-retry 0.7.1 counts retries; on RabbitMQ 4.x it never
    passes 1 because the broker resets a republished ``x-death``. ``exchange=`` is
    the deprecated name of ``delay_exchange``.
    """
    delay_exchange = renamed(
        "legacy_retries", "exchange", "delay_exchange", exchange, delay_exchange
    )
    if not headers:
        return 0
    deaths = headers.get(LEGACY_DEATH_HEADER)
    if not isinstance(deaths, list | tuple):
        return 0
    total = 0
    for death in deaths:
        if not isinstance(death, Mapping):
            continue
        if _as_text(death.get("exchange")) != delay_exchange:
            continue
        count = _as_count(death.get("count"))
        if count is not None:
            total += count
    return min(total, MAX_RETRIES)


def retries_done(
    headers: Mapping[str, Any] | None,
    delay_exchange: str = "backoff",
    *,
    exchange: str = UNSET,
) -> int:
    """How many retries a message has had: ``max(backoff-retries, legacy x-death)``.

    Our own header is authoritative; the legacy count only matters for a message that
    an older nameko-amqp-retry service retried (on RabbitMQ 3.x its ``x-death`` grows
    while our header stays put), so the larger of the two is the truth on every
    broker version. A malformed ``backoff-retries`` is logged and ignored: the next
    copy is written with a valid one. A count above :data:`MAX_RETRIES` reads as it.
    The legacy count is of ``delay_exchange``'s queues; ``exchange=`` is the
    deprecated name of ``delay_exchange``.
    """
    delay_exchange = renamed(
        "retries_done", "exchange", "delay_exchange", exchange, delay_exchange
    )
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
    return max(ours, legacy_retries(headers, delay_exchange))


def delayed_headers(
    headers: Mapping[str, Any] | None,
    *,
    delay_ms: int,
    retries: int,
    keep_deaths: bool = True,
    due_ms: int | None = None,
) -> dict[str, Any]:
    """The headers of a delayed copy: the original ones plus the protocol headers.

    Only what both client libraries can encode again is carried
    (:func:`encodable_headers`). A well-formed ``x-death`` is kept, so that on
    RabbitMQ 3.x an older nameko-amqp-retry service sharing the queue still sees
    its count grow; with ``keep_deaths=False`` (the ladder and the plugin, which
    0.7.1 never reads) the broker's death headers are all dropped, so they do not
    grow on every hop. ``retries`` is capped at :data:`MAX_RETRIES`. ``due_ms``
    (epoch ms) is written as ``backoff-due``; without it, a ``backoff-due`` of an
    earlier copy is dropped.
    """
    result = encodable_headers(headers)
    if not keep_deaths:
        for key in [key for key in result if _is_death_header(key)]:
            del result[key]
    result[DELAY_HEADER] = delay_ms
    result[RETRIES_HEADER] = min(retries, MAX_RETRIES)
    result[PROTOCOL_HEADER] = PROTOCOL_VERSION
    if due_ms is None:
        result.pop(DUE_HEADER, None)
    else:
        result[DUE_HEADER] = due_ms
    return result


DEATH_HEADER_PREFIXES: Final = ("x-death", "x-first-death-", "x-last-death-")
"""Headers the broker writes when it dead-letters a message."""


def _is_death_header(key: str) -> bool:
    return key.startswith(DEATH_HEADER_PREFIXES)


def parked_headers(
    headers: Mapping[str, Any] | None,
    *,
    error: str,
    queue: str,
) -> dict[str, Any]:
    """The headers of a parked message (only what both libraries encode again)."""
    result = encodable_headers(headers)
    result[PARKED_ERROR_HEADER] = error
    result[PARKED_QUEUE_HEADER] = queue
    return result
