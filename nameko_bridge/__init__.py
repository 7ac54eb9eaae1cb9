"""nameko_bridge: nameko entrypoints that retry later with ``Backoff``.

A drop-in replacement for nameko-amqp-retry 0.7.1 (rename the import), built on the
sans-IO core of :mod:`aio_backoff`, so nameko services and asyncio consumers speak one
retry protocol.
"""

from ._entrypoints import CopyNotPlaced, expect_backoff_exception
from .backoff import Backoff, BackoffPublisher
from .decorators import entrypoint_retry

__all__ = [
    "Backoff",
    "BackoffPublisher",
    "CopyNotPlaced",
    "entrypoint_retry",
    "expect_backoff_exception",
]
