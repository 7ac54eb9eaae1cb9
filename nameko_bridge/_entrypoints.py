"""What the retrying entrypoints share: expected exceptions, copy headers, settling.

How a message is settled (the ack table; ``Backoff`` means any
:class:`aio_backoff.Backoff`, so also ``nameko_bridge.Backoff``):

============================  ==========================================================
the entrypoint...             the message
============================  ==========================================================
returns                       acked (nameko's own rule)
raises another exception      nameko's own rule: acked, or requeued with
                              ``requeue_on_error``; RPC replies with the error
raises ``Backoff``            a delayed copy is published (mandatory + confirm), *then*
                              the original is acked (also with ``requeue_on_error``);
                              RPC sends no reply yet
raises ``Backoff``, the copy  the original is requeued and ``UndeliverableMessage`` (or
cannot be placed              the publish error) propagates to the container
raises ``Backoff``, retries   the entrypoint's result becomes ``Backoff.Expired``
spent                         (chained from the Backoff and its cause); consume/event:
                              acked, or parked in ``{queue}.parked`` first with
                              ``on_expired="park"``; RPC: replied as a ``RemoteError``
                              whose ``exc_type`` is ``"Expired"``, then acked
============================  ==========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import aio_backoff
from aio_backoff.core.nameko_wire import backoff_call_id_stack

from ._compat import message_settler
from .backoff import Backoff, as_nameko_expired
from .constants import CALL_ID_STACK_HEADER_KEY

__all__ = [
    "ON_EXPIRED_CHOICES",
    "ExcInfo",
    "OnExpired",
    "backoff_in",
    "check_on_expired",
    "expect_backoff_exception",
    "retry_headers",
    "retry_later",
]

log = logging.getLogger("nameko_bridge").getChild("entrypoints")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
OnExpired = Literal["raise", "park"]
ON_EXPIRED_CHOICES: tuple[OnExpired, ...] = ("raise", "park")


def expect_backoff_exception(expected_exceptions: Any) -> Any:
    """``expected_exceptions`` (a class or a tuple) with ``Backoff`` added.

    Adds ``nameko_bridge.Backoff`` and the core ``aio_backoff.Backoff`` (so that
    either one raised in an entrypoint counts as expected) unless already covered.
    """
    if isinstance(expected_exceptions, tuple):
        given: tuple[Any, ...] = expected_exceptions
    else:
        given = (expected_exceptions,)
    missing = tuple(
        cls for cls in (Backoff, aio_backoff.Backoff) if not issubclass(cls, given)
    )
    if not missing:
        return expected_exceptions
    return given + missing


def check_on_expired(on_expired: str) -> OnExpired:
    """``on_expired`` checked against :data:`ON_EXPIRED_CHOICES`."""
    for choice in ON_EXPIRED_CHOICES:
        if on_expired == choice:
            return choice
    msg = (
        f"on_expired must be one of {ON_EXPIRED_CHOICES!r}, got {on_expired!r}: "
        "'raise' gives the entrypoint Backoff.Expired and acks the message, 'park' "
        "also keeps a copy in the '{queue}.parked' queue"
    )
    raise ValueError(msg)


def backoff_in(exc_info: ExcInfo | None) -> aio_backoff.Backoff | None:
    """The ``Backoff`` an entrypoint raised, if it raised one."""
    if exc_info is None:
        return None
    error = exc_info[1]
    return error if isinstance(error, aio_backoff.Backoff) else None


def retry_headers(message: Any, worker_ctx: Any) -> dict[str, Any]:
    """The headers a delayed copy starts from: the message's own, with the call-id
    stack of this worker whose own entry gains ``.backoff``.

    A new dict and a new list: neither the message nor the worker is changed.
    """
    headers = dict(message.headers or {})
    # never empty: it ends with this call
    headers[CALL_ID_STACK_HEADER_KEY] = backoff_call_id_stack(worker_ctx.call_id_stack)
    return headers


def retry_later(
    entrypoint: Any,
    message: Any,
    backoff: aio_backoff.Backoff,
    *,
    target_queue: str,
    headers: Mapping[str, Any],
) -> ExcInfo | None:
    """Publish the delayed copy and ack ``message``; or say that retries are spent.

    Returns None once the copy is placed and the original acked, or the
    ``nameko_bridge.Backoff.Expired`` exc_info (message not settled) when the limit
    is reached, whichever ``Backoff`` was raised.
    If the copy cannot be placed, the original is requeued and the error raised.
    """
    settler = message_settler(entrypoint)
    try:
        entrypoint.backoff_publisher.republish(
            backoff, message, target_queue, headers=headers
        )
    except aio_backoff.Backoff.Expired as spent:
        log.warning("retries spent for a message of queue %r: %s", target_queue, spent)
        expired = as_nameko_expired(spent)
        return type(expired), expired, expired.__traceback__
    except BaseException:
        log.exception(
            "could not place the delayed copy of a message for queue %r; "
            "requeueing the original",
            target_queue,
        )
        settler.requeue_message(message)
        raise
    settler.ack_message(message)
    return None
