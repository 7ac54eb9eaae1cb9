"""The aio-pika layer: consumers, the delayed-copy publisher, expiry actions and RPC.

``Retrier`` (``_retrier``) consumes queues and runs handlers through its
``process()`` context (``_processing``), under a ``RetryPolicy`` (``_policy``);
``DelayedPublisher`` (``_publisher``) places delayed and parked copies; the final
actions on expiry are in ``_expiry``; carrying out the ack table's failures (keep,
requeue after a pause, the per-message tries, the log line) in ``_settle``, and
which row of it a failure is in ``_failures``. aio-pika's RPC pattern with backoff:
``BackoffRPC`` in ``_rpc``, ``BackoffJsonRPC`` and its error replies in ``_jsonrpc``.
Where a copy waits: one placement per topology (``_placement``): ``_per_delay``,
``_ladder``, ``_plugin``; ``verify`` (``_verify``) asks a broker which it can run.
"""

from ._expiry import (
    ExpiredMessage,
    ExpiryAction,
    dead_letter,
    dead_letter_or_park,
    drop,
    park,
)
from ._jsonrpc import EXPIRED_ERROR_TYPE, BackoffJsonRPC, RemoteBackoffExpired
from ._ladder import Replayed, replay_undeliverable
from ._policy import RetryPolicy
from ._publisher import CopyNotPlaced, DelayedPublisher
from ._retrier import Handler, Retrier
from ._rpc import BackoffRPC
from ._verify import BrokerReport, verify

__all__ = [
    "EXPIRED_ERROR_TYPE",
    "BackoffJsonRPC",
    "BackoffRPC",
    "BrokerReport",
    "CopyNotPlaced",
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
]
