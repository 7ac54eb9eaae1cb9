"""The aio-pika layer: consumers, the delayed-copy publisher, expiry actions and RPC.

``Retrier`` (``_consumer``) runs handlers and settles their messages;
``DelayedPublisher`` (``_publisher``) places delayed and parked copies; the final
actions on expiry are in ``_expiry``; aio-pika's RPC pattern with backoff in ``_rpc``.
"""

from ._consumer import Handler, Retrier, RetryPolicy
from ._expiry import (
    ExpiredMessage,
    ExpiryAction,
    dead_letter,
    dead_letter_or_park,
    drop,
    park,
)
from ._publisher import CopyNotPlaced, DelayedPublisher
from ._rpc import EXPIRED_ERROR_TYPE, BackoffJsonRPC, BackoffRPC, RemoteBackoffExpired

__all__ = [
    "EXPIRED_ERROR_TYPE",
    "BackoffJsonRPC",
    "BackoffRPC",
    "CopyNotPlaced",
    "DelayedPublisher",
    "ExpiredMessage",
    "ExpiryAction",
    "Handler",
    "RemoteBackoffExpired",
    "Retrier",
    "RetryPolicy",
    "dead_letter",
    "dead_letter_or_park",
    "drop",
    "park",
]
