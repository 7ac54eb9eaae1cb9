"""aio-backoff: delayed retries with backoff schedules on RabbitMQ.

A consumer that cannot finish a message yet raises :class:`Backoff`; the message comes
back later on the retry schedule, and once the limit is spent the handler sees
:class:`Backoff.Expired`.

Three layers, one folder each: :mod:`aio_backoff.core` (sans-IO: schedules,
``Backoff``, headers, topology, the plan and nameko's wire format),
:mod:`aio_backoff.aiopika` (consumers and publishers on aio-pika) and
:mod:`aio_backoff.nameko_protocol` (nameko's RPC and events from asyncio). The core's
names are imported here at once; the others on first use (PEP 562), so that
``import aio_backoff.core`` in a nameko process never loads aio-pika.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

from .core import (
    ACTIONS,
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    DELAY_HEADER,
    DUE_HEADER,
    MAX_DELAY_MS,
    PROTOCOL_VERSION,
    QUEUE_TYPES,
    RENAMED_CONSTANTS,
    RETRIES_HEADER,
    TOPOLOGIES,
    TRACEPARENT_HEADER,
    Action,
    Backoff,
    BackoffConfigError,
    CopyNotPlaced,
    DelayedExchange,
    DelayQueue,
    FailurePolicy,
    Hooks,
    Ladder,
    LeaseBook,
    Outcome,
    Reply,
    RetryPlan,
    Schedule,
    Settle,
    TransientTries,
    as_backoff,
    backoff_class,
    capped,
    decide,
    delay_queue,
    delay_queue_name,
    exponential,
    fixed,
    full_jitter,
    gauss_jitter,
    legacy_retries,
    parking_queue_name,
    plan_retry,
    retries_done,
    round_to_nearest,
    sequence,
)
from .core._renames import moved_constant
from .core.nameko_wire import (
    BROADCAST,
    SERVICE_POOL,
    SINGLETON,
    HandlerType,
    IncorrectSignature,
    MalformedRequest,
    MethodNotFound,
    RemoteError,
    RemoteExpired,
    RpcTimeout,
    UnknownService,
    event_exchange_name,
    event_queue,
    rpc_queue_name,
)

try:
    __version__ = importlib.metadata.version("aio-backoff")
except importlib.metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

if TYPE_CHECKING:
    from .aiopika import (
        EXPIRED_ERROR_TYPE,
        BackoffJsonRPC,
        BackoffRPC,
        BrokerReport,
        DelayedPublisher,
        ExpiredMessage,
        ExpiryAction,
        Handler,
        RemoteBackoffExpired,
        Replayed,
        Retrier,
        RetryPolicy,
        dead_letter,
        dead_letter_or_park,
        drop,
        park,
        replay_undeliverable,
        verify,
    )
    from .nameko_protocol import (
        CallContext,
        EventDispatcher,
        NamekoRpcClient,
        NamekoService,
        current_call,
    )

_LAZY = {
    **dict.fromkeys(
        (
            "EXPIRED_ERROR_TYPE",
            "BackoffJsonRPC",
            "BackoffRPC",
            "BrokerReport",
            "DelayedPublisher",
            "ExpiredMessage",
            "ExpiryAction",
            "Handler",
            "RemoteBackoffExpired",
            "Replayed",
            "Retrier",
            "RetryPolicy",
            "dead_letter",
            "dead_letter_or_park",
            "drop",
            "park",
            "replay_undeliverable",
            "verify",
        ),
        ".aiopika",
    ),
    **dict.fromkeys(
        (
            "CallContext",
            "EventDispatcher",
            "NamekoRpcClient",
            "NamekoService",
            "current_call",
        ),
        ".nameko_protocol",
    ),
}
"""Public names of the layers that need aio-pika, and the subpackage of each."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        return moved_constant(__name__, name, RENAMED_CONSTANTS)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ACTIONS",
    "BROADCAST",
    "DEFAULT_DELAY_EXCHANGE",
    "DEFAULT_GRACE_MS",
    "DELAY_HEADER",
    "DUE_HEADER",
    "EXPIRED_ERROR_TYPE",
    "MAX_DELAY_MS",
    "PROTOCOL_VERSION",
    "QUEUE_TYPES",
    "RETRIES_HEADER",
    "SERVICE_POOL",
    "SINGLETON",
    "TOPOLOGIES",
    "TRACEPARENT_HEADER",
    "Action",
    "Backoff",
    "BackoffConfigError",
    "BackoffJsonRPC",
    "BackoffRPC",
    "BrokerReport",
    "CallContext",
    "CopyNotPlaced",
    "DelayQueue",
    "DelayedExchange",
    "DelayedPublisher",
    "EventDispatcher",
    "ExpiredMessage",
    "ExpiryAction",
    "FailurePolicy",
    "Handler",
    "HandlerType",
    "Hooks",
    "IncorrectSignature",
    "Ladder",
    "LeaseBook",
    "MalformedRequest",
    "MethodNotFound",
    "NamekoRpcClient",
    "NamekoService",
    "Outcome",
    "RemoteBackoffExpired",
    "RemoteError",
    "RemoteExpired",
    "Replayed",
    "Reply",
    "Retrier",
    "RetryPlan",
    "RetryPolicy",
    "RpcTimeout",
    "Schedule",
    "Settle",
    "TransientTries",
    "UnknownService",
    "as_backoff",
    "backoff_class",
    "capped",
    "current_call",
    "dead_letter",
    "dead_letter_or_park",
    "decide",
    "delay_queue",
    "delay_queue_name",
    "drop",
    "event_exchange_name",
    "event_queue",
    "exponential",
    "fixed",
    "full_jitter",
    "gauss_jitter",
    "legacy_retries",
    "park",
    "parking_queue_name",
    "plan_retry",
    "replay_undeliverable",
    "retries_done",
    "round_to_nearest",
    "rpc_queue_name",
    "sequence",
    "verify",
]
