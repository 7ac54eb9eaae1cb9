"""The sans-IO core: every decision, no I/O.

Schedules (``_schedule``: where the delay is computed), the ``Backoff`` exception
(``_backoff``), the protocol headers (``_protocol``), the delay topologies' names,
arguments and routing (``_topology`` with the per-delay queues, ``_ladder``,
``_plugin``), the retry plan (``_plan``), the ack and failure table (``_outcome``)
and nameko's wire format (:mod:`aio_backoff.core.nameko_wire`). Nothing here imports
aio-pika, kombu or eventlet, so a nameko process can use all of it without loading
aio-pika::

    python -c "import sys, aio_backoff.core; assert 'aio_pika' not in sys.modules"
"""

from typing import Any

from ._backoff import Backoff, BackoffConfigError, RetryFor, as_backoff, backoff_class
from ._events import NO_HOOKS, Hooks
from ._ladder import LADDER_LEVELS, MAX_LADDER_DELAY_MS, QUEUE_TYPES, Ladder, QueueType
from ._outcome import (
    ACTIONS,
    Action,
    CopyNotPlaced,
    FailurePolicy,
    Outcome,
    Reply,
    Settle,
    TransientTries,
    decide,
)
from ._plan import RetryPlan, plan_retry
from ._plugin import DelayedExchange
from ._protocol import (
    DELAY_HEADER,
    DUE_HEADER,
    KEPT_PROPERTIES,
    LEGACY_DEATH_HEADER,
    MAX_RETRIES,
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    RETRIES_HEADER,
    delayed_headers,
    encodable_headers,
    legacy_retries,
    parked_headers,
    retries_done,
)
from ._renames import moved_constant
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
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    MAX_DELAY_MS,
    TOPOLOGIES,
    DelayQueue,
    LeaseBook,
    TopologyName,
    check_topology,
    delay_queue,
    delay_queue_name,
    parking_queue_name,
)
from ._trace import TRACEPARENT_HEADER

__all__ = [
    "ACTIONS",
    "DEFAULT_DELAY_EXCHANGE",
    "DEFAULT_GRACE_MS",
    "DELAY_HEADER",
    "DUE_HEADER",
    "KEPT_PROPERTIES",
    "LADDER_LEVELS",
    "LEGACY_DEATH_HEADER",
    "MAX_DELAY_MS",
    "MAX_LADDER_DELAY_MS",
    "MAX_RETRIES",
    "NO_HOOKS",
    "PARKED_ERROR_HEADER",
    "PARKED_QUEUE_HEADER",
    "PROTOCOL_HEADER",
    "PROTOCOL_VERSION",
    "QUEUE_TYPES",
    "RETRIES_HEADER",
    "TOPOLOGIES",
    "TRACEPARENT_HEADER",
    "Action",
    "Backoff",
    "BackoffConfigError",
    "CopyNotPlaced",
    "DelayQueue",
    "DelayedExchange",
    "FailurePolicy",
    "Hooks",
    "Ladder",
    "LeaseBook",
    "Outcome",
    "QueueType",
    "Reply",
    "RetryFor",
    "RetryPlan",
    "Schedule",
    "Settle",
    "TopologyName",
    "TransientTries",
    "as_backoff",
    "backoff_class",
    "capped",
    "check_topology",
    "decide",
    "delay_queue",
    "delay_queue_name",
    "delayed_headers",
    "encodable_headers",
    "exponential",
    "fixed",
    "full_jitter",
    "gauss_jitter",
    "legacy_retries",
    "parked_headers",
    "parking_queue_name",
    "plan_retry",
    "retries_done",
    "round_to_nearest",
    "sequence",
]

RENAMED_CONSTANTS: dict[str, tuple[str, Any]] = {
    "DEFAULT_EXCHANGE": ("DEFAULT_DELAY_EXCHANGE", DEFAULT_DELAY_EXCHANGE),
    "EXPIRY_GRACE_PERIOD_MS": ("DEFAULT_GRACE_MS", DEFAULT_GRACE_MS),
}
"""Deprecated constant names: old name -> (new name, value)."""


def __getattr__(name: str) -> Any:
    return moved_constant(__name__, name, RENAMED_CONSTANTS)
