"""Everything that depends on the nameko version, in one place.

nameko 2.x settles messages through ``queue_consumer`` (on the entrypoint, or on its
``rpc_consumer`` for RPC); nameko 3.x renamed that to ``consumer``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["message_settler"]


def message_settler(entrypoint: Any) -> Any:
    """The object whose ``ack_message`` / ``requeue_message`` settle the messages
    ``entrypoint`` consumes."""
    owner = getattr(entrypoint, "rpc_consumer", entrypoint)
    for name in ("queue_consumer", "consumer"):  # nameko 2.x, then 3.x
        candidate = getattr(owner, name, None)
        if candidate is not None and hasattr(candidate, "ack_message"):
            return candidate
    msg = (
        f"cannot find how {type(entrypoint).__name__} acks its messages: expected "
        "a 'queue_consumer' (nameko 2.x) or 'consumer' (nameko 3.x) attribute with "
        "ack_message(); nameko_bridge supports nameko 2.14"
    )
    raise TypeError(msg)
