"""Header names nameko entrypoints read and write when a message is retried."""

from __future__ import annotations

from typing import Final

__all__ = ["CALL_ID_STACK_HEADER_KEY", "RPC_METHOD_ID_HEADER_KEY"]

RPC_METHOD_ID_HEADER_KEY: Final = "nameko.rpc_method_id"
"""The RPC method (``service.method``) a retried request is for: a delayed copy comes
back to ``rpc-{service}`` through the default exchange, so its routing key no longer
names the method."""

CALL_ID_STACK_HEADER_KEY: Final = "nameko.call_id_stack"
"""nameko's call-id stack; a retried call's own entry gains ``.backoff``."""
