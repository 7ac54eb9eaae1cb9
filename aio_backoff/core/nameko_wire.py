"""nameko 2.x's wire format as plain functions: names, headers, bodies and errors.

What a nameko 2.14 service puts on the wire, so that asyncio code can call nameko
services, serve nameko callers and exchange events with them:

- RPC: requests go to the durable topic exchange ``nameko-rpc`` with routing key
  ``{service}.{method}``; a service consumes ``rpc-{service}`` (bound with
  ``{service}.*``). A request carries ``reply_to`` (the routing key of the caller's
  reply queue ``rpc.reply-{caller}-{uuid}`` on the same exchange, ``x-expires`` 5
  minutes) and a ``correlation_id``. Body ``{"args": [...], "kwargs": {...}}``;
  reply ``{"result": ..., "error": null | {exc_type, exc_path, exc_args, value}}``.
- Events: a service dispatches to the durable topic exchange ``{service}.events``
  with the event type as routing key; each handler has its own queue, named by
  :func:`event_queue` after the handler type.
- Context: every entry of a worker's context is a header ``nameko.{key}``; the
  ``nameko.call_id_stack`` header lists the call ids that led to this message
  (``{service}.{method}.{uuid}``, at most 11). A message that a service backed off
  carries ``nameko.rpc_method_id`` (the original routing key: the copy comes back
  through the default exchange) and ``.backoff`` on the last call id. That header
  is trusted only on a copy that came back through the delay topology
  (:func:`rpc_method_id`), and it is never context: it is not carried on to the
  calls and events a handler makes (:func:`context_data`, :func:`context_headers`).
- Bodies are JSON (``application/json``, utf-8), with kombu's envelopes
  ``{"__type__": ..., "__value__": ...}`` for datetimes, dates, times, decimals,
  UUIDs and bytes.

Nothing here talks to a broker.
"""

from __future__ import annotations

import base64
import enum
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final, TypeVar

from ._backoff import Backoff
from ._protocol import (
    DELAY_HEADER,
    LEGACY_DEATH_HEADER,
    PROTOCOL_HEADER,
    RETRIES_HEADER,
    legacy_retries,
)
from ._renames import UNSET, renamed
from ._topology import DEFAULT_DELAY_EXCHANGE

__all__ = [
    "BACKOFF_CALL_SUFFIX",
    "BROADCAST",
    "CALL_ID_STACK_HEADER",
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "DELIVERY_KEYS",
    "HEADER_PREFIX",
    "PARENT_CALLS_TRACKED",
    "RPC_EXCHANGE",
    "RPC_METHOD_ID_HEADER",
    "RPC_REPLY_QUEUE_TTL_MS",
    "SERVICE_POOL",
    "SINGLETON",
    "EventQueue",
    "HandlerType",
    "IncorrectSignature",
    "MalformedRequest",
    "MethodNotFound",
    "RemoteError",
    "RemoteExpired",
    "RpcTimeout",
    "UnknownService",
    "backoff_call_id_stack",
    "call_id_stack",
    "context_data",
    "context_headers",
    "decode_reply",
    "decode_request",
    "dumps",
    "encode_reply",
    "encode_request",
    "event_exchange_name",
    "event_queue",
    "loads",
    "nameko_error",
    "new_call_id",
    "protocol_error",
    "remote_error",
    "rpc_binding_key",
    "rpc_method_id",
    "rpc_queue_name",
    "rpc_reply_queue_name",
    "rpc_routing_key",
    "serialize_error",
    "without_carried_delivery_keys",
]

RPC_EXCHANGE: Final = "nameko-rpc"
HEADER_PREFIX: Final = "nameko"
CALL_ID_STACK_KEY: Final = "call_id_stack"
CALL_ID_STACK_HEADER: Final = f"{HEADER_PREFIX}.{CALL_ID_STACK_KEY}"
RPC_METHOD_ID_KEY: Final = "rpc_method_id"
RPC_METHOD_ID_HEADER: Final = f"{HEADER_PREFIX}.{RPC_METHOD_ID_KEY}"
"""Written on a backed-off RPC copy (nameko-amqp-retry's name): the original routing
key ``{service}.{method}``, which the copy loses on its way through the delay queue."""
DELIVERY_KEYS: Final = frozenset(
    {
        RPC_METHOD_ID_KEY,
        DELAY_HEADER,
        RETRIES_HEADER,
        PROTOCOL_HEADER,
        LEGACY_DEATH_HEADER,
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
"""Context keys that describe one delivery (its retry count, its method id, the
broker's dead-letter history), not the call: nameko puts every header of a request
into the worker context and every context entry onto the worker's own calls, as
``nameko.{key}``. So a receiver never takes these from a caller's ``nameko.*``
context, and a sender never passes them on: a service called from a retried method
must not see that method's count or run that method."""

BACKOFF_CALL_SUFFIX: Final = ".backoff"
RPC_REPLY_QUEUE_TTL_MS: Final = 300_000
PARENT_CALLS_TRACKED: Final = 10
"""nameko's default ``parent_calls_tracked``: a stack holds this many parents."""
CONTENT_TYPE: Final = "application/json"
CONTENT_ENCODING: Final = "utf-8"
NAMEKO_EXCEPTIONS: Final = "nameko.exceptions"
MALFORMED_REPLY: Final = "MalformedReply"


# -- names -----------------------------------------------------------------------


def rpc_queue_name(service: str) -> str:
    """``rpc-{service}``: the queue a service's RPC methods consume."""
    return f"rpc-{service}"


def rpc_routing_key(service: str, method: str) -> str:
    """``{service}.{method}``: the routing key (and method id) of a request."""
    return f"{service}.{method}"


def rpc_binding_key(service: str) -> str:
    """``{service}.*``: how ``rpc-{service}`` is bound to the RPC exchange."""
    return f"{service}.*"


def rpc_reply_queue_name(service: str, reply_id: str) -> str:
    """``rpc.reply-{service}-{reply_id}``; ``reply_id`` is also its routing key."""
    return f"rpc.reply-{service}-{reply_id}"


def event_exchange_name(service: str) -> str:
    """``{service}.events``: where ``service`` dispatches its events."""
    return f"{service}.events"


class HandlerType(enum.StrEnum):
    """How the instances of event handlers share events (nameko's handler types)."""

    SERVICE_POOL = "service_pool"
    """One instance of each (service, method) gets each event."""
    SINGLETON = "singleton"
    """One handler in the whole cluster gets each event."""
    BROADCAST = "broadcast"
    """Every instance of every handler gets each event."""


SERVICE_POOL: Final = HandlerType.SERVICE_POOL
SINGLETON: Final = HandlerType.SINGLETON
BROADCAST: Final = HandlerType.BROADCAST


@dataclass(frozen=True)
class EventQueue:
    """The queue an event handler consumes, declared the way nameko declares it."""

    name: str
    exchange: str
    routing_key: str
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False


def event_queue(
    source_service: str,
    event_type: str,
    *,
    service_name: str,
    method_name: str,
    handler_type: HandlerType | str = SERVICE_POOL,
    reliable_delivery: bool = True,
    broadcast_identifier: str | None = None,
) -> EventQueue:
    """The queue of handler ``service_name.method_name`` for ``event_type`` events.

    - service pool: ``evt-{source}-{type}--{service}.{method}``
    - singleton: ``evt-{source}-{type}``
    - broadcast: ``evt-{source}-{type}--{service}.{method}-{identifier}``

    Without reliable delivery the queue is auto-delete, and a broadcast queue is
    exclusive too. As in nameko, a broadcast handler with reliable delivery needs
    an explicit ``broadcast_identifier`` that survives restarts (a fresh one would
    strand the events queued for the previous instance).
    """
    kind = HandlerType(handler_type)
    prefix = f"evt-{source_service}-{event_type}"
    if kind is HandlerType.SERVICE_POOL:
        name = f"{prefix}--{service_name}.{method_name}"
    elif kind is HandlerType.SINGLETON:
        name = prefix
    else:
        if broadcast_identifier is None:
            if reliable_delivery:
                msg = (
                    f"broadcast handler {service_name}.{method_name} uses reliable "
                    "delivery but no broadcast_identifier: a random one would "
                    "strand queued events at every restart; pass a stable "
                    "broadcast_identifier=... or reliable_delivery=False"
                )
                raise ValueError(msg)
            broadcast_identifier = uuid.uuid4().hex
        name = f"{prefix}--{service_name}.{method_name}-{broadcast_identifier}"
    return EventQueue(
        name=name,
        exchange=event_exchange_name(source_service),
        routing_key=event_type,
        durable=True,
        auto_delete=not reliable_delivery,
        exclusive=kind is HandlerType.BROADCAST and not reliable_delivery,
    )


# -- context headers ---------------------------------------------------------------


def new_call_id(service: str, method: str) -> str:
    """A fresh call id, ``{service}.{method}.{uuid4}``."""
    return f"{service}.{method}.{uuid.uuid4()}"


def call_id_stack(
    parents: Iterable[str],
    call_id: str,
    *,
    tracked: int = PARENT_CALLS_TRACKED,
) -> list[str]:
    """``parents`` then ``call_id``, keeping the last ``tracked + 1`` entries."""
    stack = [*parents, call_id]
    return stack[-(tracked + 1) :]


def backoff_call_id_stack(stack: Sequence[str]) -> list[str]:
    """``stack`` with ``.backoff`` appended to its last entry (a backed-off call)."""
    if not stack:
        return []
    return [*stack[:-1], f"{stack[-1]}{BACKOFF_CALL_SUFFIX}"]


def context_headers(data: Mapping[str, Any]) -> dict[str, Any]:
    """Worker context to headers: ``{key: v}`` to ``{"nameko.key": v}``, no Nones.

    The :data:`DELIVERY_KEYS` are never sent on: ``rpc_method_id`` names the
    method of the message being handled (a receiver that read it would run that
    method instead of the one called), and the retry headers count this message's
    retries, not the next one's.
    """
    return {
        f"{HEADER_PREFIX}.{key}": value
        for key, value in data.items()
        if value is not None and key not in DELIVERY_KEYS
    }


def context_data(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers to worker context: the ``nameko.`` prefix stripped, the rest kept.

    The call-id stack comes back as a list of str (``[]`` when absent or malformed).
    The :data:`DELIVERY_KEYS` are taken only from this message's own headers, never
    from a caller's context (see :func:`without_carried_delivery_keys`).
    """
    data = without_carried_delivery_keys(
        {_context_key(key): value for key, value in (headers or {}).items()},
        headers,
    )
    data[CALL_ID_STACK_KEY] = _as_stack(data.get(CALL_ID_STACK_KEY))
    return data


def _context_key(header: str) -> str:
    return header.removeprefix(f"{HEADER_PREFIX}.")


def without_carried_delivery_keys(
    data: dict[str, Any], headers: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``data`` (a context made from ``headers``) without what a caller carried on.

    A :data:`DELIVERY_KEYS` entry is kept only when this message has the header
    itself, unprefixed (a delayed copy's own ``backoff-retries``); one that came as
    ``nameko.{key}`` is a caller's context and is dropped, and ``rpc_method_id`` is
    always dropped (the receiver routes by :func:`rpc_method_id`). Changes ``data``
    in place and returns it.
    """
    for key in DELIVERY_KEYS:
        if headers and key in headers and key != RPC_METHOD_ID_KEY:
            data[key] = headers[key]
        else:
            data.pop(key, None)
    return data


def rpc_method_id(
    headers: Mapping[str, Any] | None,
    routing_key: str | None,
    *,
    delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
    exchange: str = UNSET,
) -> str:
    """The method id (``{service}.{method}``) an RPC request is for.

    A delayed copy comes back through the default exchange with its queue's name as
    routing key, so it names its method in ``nameko.rpc_method_id``. Only a message
    that came back through the delay topology (it carries ``backoff-retries``, or
    an ``x-death`` of ``delay_exchange``'s queues from nameko-amqp-retry) is trusted
    with that header: nameko copies every ``nameko.*`` header of a request into the
    worker context, so a nameko service that handles a retried request sends the
    header on with the calls it makes. Any other request is routed by
    ``routing_key``. ``exchange=`` is the deprecated name of ``delay_exchange``.
    """
    delay_exchange = renamed(
        "rpc_method_id", "exchange", "delay_exchange", exchange, delay_exchange
    )
    if headers and (
        RETRIES_HEADER in headers or legacy_retries(headers, delay_exchange) > 0
    ):
        method_id = headers.get(RPC_METHOD_ID_HEADER)
        if isinstance(method_id, bytes):
            method_id = method_id.decode(errors="replace")
        if isinstance(method_id, str) and method_id:
            return method_id
    return routing_key or ""


def _as_stack(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        return []
    stack = []
    for entry in value:
        if isinstance(entry, bytes):
            stack.append(entry.decode(errors="replace"))
        elif isinstance(entry, str):
            stack.append(entry)
    return stack


# -- bodies ------------------------------------------------------------------------


def _envelope(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _encode_bytes(value: bytes) -> dict[str, Any]:
    try:
        return _envelope("bytes", value.decode())
    except UnicodeDecodeError:
        return _envelope("base64", base64.b64encode(value).decode())


_ENCODERS: tuple[tuple[type[Any], Callable[[Any], Any]], ...] = (
    (datetime, lambda v: _envelope("datetime", v.isoformat())),
    (date, lambda v: _envelope("date", v.isoformat())),
    (time, lambda v: _envelope("time", v.isoformat())),
    (Decimal, lambda v: _envelope("decimal", str(v))),
    (uuid.UUID, lambda v: _envelope("uuid", v.hex)),
    (bytes, _encode_bytes),
)

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda v: v.encode(),
    "base64": lambda v: base64.b64decode(v.encode()),
}


def _default(value: Any) -> Any:
    for kind, encode in _ENCODERS:
        if isinstance(value, kind):
            return encode(value)
    msg = f"a {type(value).__qualname__} cannot be sent as JSON"
    raise TypeError(msg)


def _object_hook(value: dict[str, Any]) -> Any:
    if value.keys() == {"__type__", "__value__"}:
        decode = _DECODERS.get(value["__type__"])
        if decode is not None:
            return decode(value["__value__"])
    return value


def dumps(value: Any) -> bytes:
    """``value`` as nameko's JSON (kombu's envelopes for dates, decimals, ...).

    Raises ``TypeError`` or ``ValueError`` for what JSON cannot carry.
    """
    return json.dumps(value, default=_default).encode(CONTENT_ENCODING)


_UNDECODABLE = (
    ValueError,  # not JSON, not UTF-8, a bad date or base64
    TypeError,  # an envelope holding the wrong type (``{"__type__": "date", ...: 1}``)
    AttributeError,  # ``{"__type__": "bytes", "__value__": 1}``
    ArithmeticError,  # ``{"__type__": "decimal", "__value__": "xyz"}``
    RecursionError,  # ``b"[" * 100000``
)


def loads(body: bytes | str) -> Any:
    """The value of a JSON body written by nameko (or :func:`dumps`).

    Raises ``ValueError`` for any body that cannot be decoded: not JSON, not UTF-8,
    nested too deep, or an envelope whose value does not fit its type.
    """
    try:
        return json.loads(body, object_hook=_object_hook)
    except _UNDECODABLE as error:
        shown = body[:80] if isinstance(body, bytes | str) else body
        msg = (
            f"the body {shown!r} (length {len(body)}) is not nameko's JSON: "
            f"{type(error).__name__}: {str(error)[:200]}"
        )
        raise ValueError(msg) from error


def encode_request(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """The body of an RPC request."""
    return dumps({"args": list(args), "kwargs": dict(kwargs)})


def decode_request(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` of an RPC request; raises :class:`MalformedRequest`."""
    try:
        payload = loads(body)
    except ValueError as error:
        msg = f"RPC request body cannot be decoded: {error}"
        raise nameko_error(MalformedRequest, msg) from error
    if not isinstance(payload, dict) or not {"args", "kwargs"} <= payload.keys():
        msg = "Message missing `args` or `kwargs`"
        raise nameko_error(MalformedRequest, msg)
    args, kwargs = payload["args"], payload["kwargs"]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        msg = f"`args` must be a list and `kwargs` an object, got {payload!r}"
        raise nameko_error(MalformedRequest, msg)
    return args, kwargs


def encode_reply(result: Any = None, error: Mapping[str, Any] | None = None) -> bytes:
    """The body of an RPC reply.

    A ``result`` that JSON cannot carry becomes nameko's ``UnserializableValueError``,
    as a nameko service would answer.
    """
    try:
        return dumps({"result": result, "error": dict(error) if error else None})
    except (TypeError, ValueError):
        try:
            shown = repr(result)
        except Exception:  # noqa: BLE001 - any broken __repr__ must not stop the reply
            shown = "[__repr__ failed]"
        unserializable = protocol_error(
            "UnserializableValueError", f"Unserializable value: `{shown}`", args=()
        )
        return dumps({"result": None, "error": unserializable})


def decode_reply(body: bytes) -> Any:
    """The result of an RPC reply, or raise its error as a :class:`RemoteError`."""
    try:
        payload = loads(body)
    except ValueError as not_json:
        msg = f"RPC reply body is not JSON: {body[:200]!r}"
        raise RemoteError(MALFORMED_REPLY, msg) from not_json
    if not isinstance(payload, dict) or not {"result", "error"} & payload.keys():
        msg = f"RPC reply has neither `result` nor `error`: {payload!r}"
        raise RemoteError(MALFORMED_REPLY, msg)
    error = payload.get("error")
    if error:
        raise remote_error(error)
    return payload.get("result")


# -- errors ------------------------------------------------------------------------


def _safe(value: Any) -> Any:
    """``value`` made JSON-safe the way nameko does it: str for anything unknown."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {_safe(key): _safe(item) for key, item in value.items()}
    if isinstance(value, Iterable):
        return [_safe(item) for item in value]
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - same fallback as nameko
        return "[__unicode__ failed]"


def _exc_path(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__name__}"


def serialize_error(exc: BaseException) -> dict[str, Any]:
    """``exc`` as the ``error`` of a reply: ``exc_type``, ``exc_path``, ...

    ``Backoff.Expired`` is ``exc_type == "Expired"``, as in nameko-amqp-retry. An
    error relayed from a service further down (a :class:`RemoteError` the handler
    did not catch) is sent the way a nameko service relays one: nameko's own
    ``MethodNotFound``, ``MalformedRequest`` and ``IncorrectSignature`` as
    themselves, anything else as ``nameko.exceptions.RemoteError`` whose value
    names the original type (so an expiry further down is not this method's).
    """
    if isinstance(exc, RemoteError):
        if exc.exc_path in _KNOWN:
            return {
                "exc_type": exc.exc_type,
                "exc_path": exc.exc_path,
                "exc_args": _safe(exc.exc_args),
                "value": exc.value,
            }
        relayed = str(exc)
        return protocol_error("RemoteError", relayed)
    return {
        "exc_type": type(exc).__name__,
        "exc_path": _exc_path(type(exc)),
        "exc_args": [_safe(arg) for arg in exc.args],
        "value": _safe(exc),
    }


def protocol_error(
    exc_type: str, value: str, *, args: Sequence[Any] | None = None
) -> dict[str, Any]:
    """One of nameko's own errors (``nameko.exceptions.{exc_type}``) as a reply.

    nameko callers raise their own ``MethodNotFound``, ``IncorrectSignature``, ...
    for these.
    """
    return {
        "exc_type": exc_type,
        "exc_path": f"{NAMEKO_EXCEPTIONS}.{exc_type}",
        "exc_args": [value] if args is None else list(args),
        "value": value,
    }


class RemoteError(Exception):
    """A remote service answered with an error.

    ``exc_type`` (class name), ``exc_path`` (dotted path), ``exc_args`` and
    ``value`` (its ``str``) describe the error the service raised; ``str()`` reads
    ``"{exc_type} {value}"`` like nameko's ``RemoteError``.
    """

    def __init__(
        self,
        exc_type: str | None = None,
        value: str = "",
        *,
        exc_path: str | None = None,
        exc_args: Sequence[Any] = (),
    ) -> None:
        self.exc_type = exc_type
        self.value = value
        self.exc_path = exc_path
        self.exc_args = list(exc_args)
        super().__init__(f"{exc_type} {value}")


_LIMIT = re.compile(r"after '(\d+)' retries")


class RemoteExpired(RemoteError, Backoff.Expired):
    """The remote method spent its retries: catch it as ``Backoff.Expired``.

    ``limit`` and ``retries`` are read from the remote message when it has the
    usual form (``Backoff aborted after '3' retries (~6 seconds)``), else 0.
    """

    def __init__(
        self,
        exc_type: str | None = "Expired",
        value: str = "",
        *,
        exc_path: str | None = None,
        exc_args: Sequence[Any] = (),
    ) -> None:
        super().__init__(exc_type, value, exc_path=exc_path, exc_args=exc_args)
        found = _LIMIT.search(value)
        if found:
            self.limit = self.retries = int(found.group(1))


class MethodNotFound(RemoteError):
    """The service has no such RPC method (nameko's ``MethodNotFound``)."""


class MalformedRequest(RemoteError):
    """The request body was not ``{"args": [...], "kwargs": {...}}``."""


class IncorrectSignature(RemoteError):
    """The arguments do not fit the method's signature."""


class UnknownService(Exception):
    """No queue is bound for the service: nobody could ever answer the call."""

    def __init__(self, service: str) -> None:
        self.service = service
        super().__init__(
            f"Unknown service {service!r}: no queue is bound to the RPC exchange for "
            "it; start the service first or check its name"
        )


class RpcTimeout(TimeoutError):
    """No reply came within the caller's timeout."""


E = TypeVar("E", bound=RemoteError)


def nameko_error(kind: type[E], value: str) -> E:
    """One of nameko's own errors (``MethodNotFound``, ...), ready to raise or send."""
    exc_type = kind.__name__
    return kind(
        exc_type, value, exc_path=f"{NAMEKO_EXCEPTIONS}.{exc_type}", exc_args=[value]
    )


_KNOWN: Final[dict[str, type[RemoteError]]] = {
    f"{NAMEKO_EXCEPTIONS}.MethodNotFound": MethodNotFound,
    f"{NAMEKO_EXCEPTIONS}.MalformedRequest": MalformedRequest,
    f"{NAMEKO_EXCEPTIONS}.IncorrectSignature": IncorrectSignature,
}


def remote_error(data: Mapping[str, Any]) -> RemoteError:
    """The exception for a reply's ``error``: :class:`RemoteExpired` when
    ``exc_type == "Expired"``, nameko's own errors by type, else
    :class:`RemoteError`."""
    exc_type = data.get("exc_type")
    exc_path = data.get("exc_path")
    value = data.get("value")
    exc_args = data.get("exc_args")
    kind: type[RemoteError] = RemoteError
    if exc_type == "Expired":
        kind = RemoteExpired
    elif isinstance(exc_path, str) and exc_path in _KNOWN:
        kind = _KNOWN[exc_path]
    return kind(
        exc_type if isinstance(exc_type, str) else None,
        value if isinstance(value, str) else "" if value is None else str(value),
        exc_path=exc_path if isinstance(exc_path, str) else None,
        exc_args=exc_args if isinstance(exc_args, list) else (),
    )
