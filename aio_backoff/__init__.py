"""aio-backoff: delayed retries with backoff schedules on RabbitMQ.

A consumer that cannot finish a message yet raises :class:`Backoff`; the message comes
back later on the retry schedule, and once the limit is spent the handler sees
:class:`Backoff.Expired`.
"""

from ._backoff import Backoff, as_backoff, backoff_class
from ._consumer import Handler, Retrier, RetryPolicy
from ._expiry import (
    ExpiredMessage,
    ExpiryAction,
    dead_letter,
    dead_letter_or_park,
    drop,
    park,
)
from ._nameko_context import CallContext, current_call
from ._nameko_events import EventDispatcher
from ._nameko_rpc import NamekoRpcClient
from ._nameko_service import NamekoService
from ._nameko_wire import (
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
from ._plan import RetryPlan, plan_retry
from ._protocol import (
    DELAY_HEADER,
    PROTOCOL_VERSION,
    RETRIES_HEADER,
    legacy_retries,
    retries_done,
)
from ._republish import CopyNotPlaced, DelayedPublisher
from ._rpc import EXPIRED_ERROR_TYPE, BackoffJsonRPC, BackoffRPC, RemoteBackoffExpired
from ._schedule import (
    Schedule,
    capped,
    exponential,
    fixed,
    full_jitter,
    gauss_jitter,
    round_to_nearest,
    sequence,
)
from ._topology import (
    DEFAULT_EXCHANGE,
    EXPIRY_GRACE_PERIOD_MS,
    MAX_DELAY_MS,
    DelayQueue,
    LeaseBook,
    delay_queue,
    delay_queue_name,
    parking_queue_name,
)

__all__ = [
    "BROADCAST",
    "DEFAULT_EXCHANGE",
    "DELAY_HEADER",
    "EXPIRED_ERROR_TYPE",
    "EXPIRY_GRACE_PERIOD_MS",
    "MAX_DELAY_MS",
    "PROTOCOL_VERSION",
    "RETRIES_HEADER",
    "SERVICE_POOL",
    "SINGLETON",
    "Backoff",
    "BackoffJsonRPC",
    "BackoffRPC",
    "CallContext",
    "CopyNotPlaced",
    "DelayQueue",
    "DelayedPublisher",
    "EventDispatcher",
    "ExpiredMessage",
    "ExpiryAction",
    "Handler",
    "HandlerType",
    "IncorrectSignature",
    "LeaseBook",
    "MalformedRequest",
    "MethodNotFound",
    "NamekoRpcClient",
    "NamekoService",
    "RemoteBackoffExpired",
    "RemoteError",
    "RemoteExpired",
    "Retrier",
    "RetryPlan",
    "RetryPolicy",
    "RpcTimeout",
    "Schedule",
    "UnknownService",
    "as_backoff",
    "backoff_class",
    "capped",
    "current_call",
    "dead_letter",
    "dead_letter_or_park",
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
    "retries_done",
    "round_to_nearest",
    "rpc_queue_name",
    "sequence",
]
