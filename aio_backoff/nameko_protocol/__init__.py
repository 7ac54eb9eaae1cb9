"""nameko's RPC and events spoken from asyncio, on aio-pika, with Backoff.

``NamekoService`` (``_service``) serves RPC methods and event handlers, from its
parts: ``_entrypoints`` (what is served), ``_consumer`` (taking messages off the
queues, draining on stop), ``_handling`` (one delivery, from message to outcome),
``_settling`` (the reply, then the aio-pika layer's carrying out of the core's
outcome table) and ``_replies`` (RPC replies).
``NamekoRpcClient`` (``_client``) calls nameko services, ``EventDispatcher``
(``_events``) dispatches events, and ``current_call`` (``_context``) is the call
context of the running handler. The wire format itself is sans-IO, in
:mod:`aio_backoff.core.nameko_wire`.
"""

from ._client import NamekoRpcClient
from ._context import CallContext, current_call
from ._events import EventDispatcher
from ._service import NamekoService

__all__ = [
    "CallContext",
    "EventDispatcher",
    "NamekoRpcClient",
    "NamekoService",
    "current_call",
]
