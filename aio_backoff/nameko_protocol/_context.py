"""The context of the nameko-protocol call being handled: call ids, context data.

A :class:`~aio_backoff.NamekoService` sets it around each handler, the way nameko
builds a worker context; RPC calls and events sent from inside a handler carry it on
(its call-id stack and its ``nameko.*`` context data), so traces run across stacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..core._protocol import retries_done
from ..core.nameko_wire import (
    CALL_ID_STACK_KEY,
    PARENT_CALLS_TRACKED,
    call_id_stack,
    context_headers,
    new_call_id,
)

__all__ = ["CallContext", "current_call", "outgoing_headers"]


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the message it is handling.

    - ``service``, ``method``: the handler (for an event handler, its method name).
    - ``call_id_stack``: the caller's stack plus this call's id (the last entry).
    - ``data``: the caller's context (``user_id``, ``language``, ... from the
      ``nameko.*`` headers), passed on to calls and events made from here.
    - ``headers``: the message headers as received.
    """

    service: str
    method: str
    call_id_stack: tuple[str, ...]
    data: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def call_id(self) -> str:
        """This call's id, ``{service}.{method}.{uuid}``."""
        return self.call_id_stack[-1]

    @property
    def retries(self) -> int:
        """How many times this message was retried before (0 on the first try)."""
        return retries_done(self.headers)


_current: ContextVar[CallContext | None] = ContextVar(
    "aio_backoff_nameko_call", default=None
)


def current_call() -> CallContext | None:
    """The context of the nameko-protocol call being handled, or None outside one."""
    return _current.get()


def outgoing_headers(
    sender: str,
    action: str,
    context_data: Mapping[str, Any] | None = None,
    *,
    tracked: int = PARENT_CALLS_TRACKED,
) -> dict[str, Any]:
    """The ``nameko.*`` headers of a call or event sent now.

    Inside a handler: the handler's context and call-id stack, as a nameko worker
    sends them. Outside: a new stack ``[{sender}.{action}.{uuid}]``.
    ``context_data`` is added on top in both cases.
    """
    handling = current_call()
    if handling is None:
        stack = [new_call_id(sender, action)]
        data: dict[str, Any] = {}
    else:
        *parents, call_id = handling.call_id_stack
        stack = call_id_stack(parents, call_id, tracked=tracked)
        data = dict(handling.data)
    data.update(context_data or {})
    data[CALL_ID_STACK_KEY] = stack
    return context_headers(data)
