"""What a service serves: its RPC methods and event handlers, as registered.

An entrypoint is a handler with its retry policy and, for an event handler, the
queue nameko would give it. Nothing here consumes or publishes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..aiopika._policy import RetryPolicy
from ..core.nameko_wire import EventQueue, IncorrectSignature, nameko_error

__all__ = ["EventEntrypoint", "Handler", "RpcEntrypoint", "bind", "check_async"]

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class RpcEntrypoint:
    """An RPC method: ``{service}.{method}`` runs ``handler`` under ``policy``."""

    method: str
    handler: Handler
    policy: RetryPolicy


@dataclass(frozen=True)
class EventEntrypoint(RpcEntrypoint):
    """An event handler, consuming ``queue``."""

    queue: EventQueue


def check_async(handler: Handler) -> None:
    """Refuse a handler that is not an ``async def`` function."""
    if not inspect.iscoroutinefunction(handler):
        msg = (
            f"{handler!r} must be an `async def` function to serve nameko calls "
            "and events; wrap blocking code with asyncio.to_thread()"
        )
        raise TypeError(msg)


def bind(handler: Handler, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Check that ``args`` and ``kwargs`` fit ``handler``; else nameko's
    ``IncorrectSignature``."""
    try:
        inspect.signature(handler).bind(*args, **kwargs)
    except TypeError as error:
        raise nameko_error(IncorrectSignature, str(error)) from error
