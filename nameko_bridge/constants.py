"""Header names nameko entrypoints read and write when a message is retried.

The names nameko-amqp-retry exported, for the wire names in
``aio_backoff.core.nameko_wire`` (one definition for both stacks).
"""

from __future__ import annotations

from typing import Final

from aio_backoff.core.nameko_wire import CALL_ID_STACK_HEADER, RPC_METHOD_ID_HEADER

__all__ = ["CALL_ID_STACK_HEADER_KEY", "RPC_METHOD_ID_HEADER_KEY"]

RPC_METHOD_ID_HEADER_KEY: Final = RPC_METHOD_ID_HEADER
"""The RPC method (``service.method``) a retried request is for: a delayed copy comes
back to ``rpc-{service}`` through the default exchange, so its routing key no longer
names the method."""

CALL_ID_STACK_HEADER_KEY: Final = CALL_ID_STACK_HEADER
"""nameko's call-id stack; a retried call's own entry gains ``.backoff``."""
