"""Why a copy was not placed, and whether trying again can help.

A failure is *permanent* when the same publish will fail the same way next time (the
broker refused the topology or the copy, the copy cannot be encoded) and *transient*
when it can heal by itself (a channel or connection closed, flow control, a confirm
that did not come in time, a broker nack). The executors look the two up in the ack
table (:func:`aio_backoff.decide`): a permanent failure keeps the message at once, a
transient one puts it back after a pause.
"""

from __future__ import annotations

import asyncio
import struct

from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelClosed,
    ChannelInvalidStateError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)
from pamqp.commands import Basic

from ..core._backoff import BackoffConfigError
from ..core._outcome import CopyNotPlaced, Outcome

__all__ = [
    "REFUSED",
    "CopyNotPlaced",
    "PublisherUnavailable",
    "describe",
    "failure_outcome",
    "not_placed",
]


class PublisherUnavailable(CopyNotPlaced):
    """The publisher cannot publish at all just now (its connection or channel is
    down): transient, and consumers wait at the gate until it is back."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message, permanent=permanent)


_Kinds = type[BaseException] | tuple[type[BaseException], ...]

REFUSED = (ChannelAccessRefused, ChannelPreconditionFailed, ChannelLockedResource)
_UNENCODABLE = (TypeError, ValueError, OverflowError, struct.error, UnicodeError)
_UNAVAILABLE = (
    AMQPConnectionError,
    ConnectionError,
    ChannelInvalidStateError,
    ChannelClosed,
)


_PERMANENT: tuple[tuple[_Kinds, str], ...] = (
    (REFUSED, "was refused by the broker"),
    (PublishError, "was returned by the broker"),
    (ChannelNotFoundEntity, "was refused by the broker"),
)
_TRANSIENT: tuple[tuple[_Kinds, str], ...] = (
    (
        DeliveryError,
        "was nacked by the broker (a queue that rejects publishes, or an internal "
        "error)",
    ),
    ((TimeoutError, asyncio.TimeoutError), "got no confirm in time"),
)


def describe(error: BaseException) -> str:
    """``error`` in a few words: a returned copy's reply code and text."""
    if isinstance(error, PublishError):
        delivery = None if error.message is None else error.message.delivery
        if isinstance(delivery, Basic.Return):
            return f"{delivery.reply_code} {delivery.reply_text}"
    if isinstance(error, ChannelInvalidStateError):
        return f"channel closed: {error}"
    return repr(error)


def not_placed(error: BaseException, what: str) -> CopyNotPlaced:
    """``error`` (raised while placing ``what``) as a :class:`CopyNotPlaced`."""
    if isinstance(error, CopyNotPlaced):
        return error
    cause = describe(error)
    for kinds, happened in _PERMANENT:
        if isinstance(error, kinds):
            msg = f"{what} could not be placed: it {happened} ({cause})"
            return CopyNotPlaced(msg, permanent=True)
    for kinds, happened in _TRANSIENT:
        if isinstance(error, kinds):
            msg = f"{what} could not be placed: it {happened} ({cause})"
            return CopyNotPlaced(msg, permanent=False)
    if isinstance(error, _UNAVAILABLE):
        return PublisherUnavailable(f"{what} could not be placed: {cause}")
    permanent = isinstance(error, _UNENCODABLE)
    happened = "cannot be encoded" if permanent else "failed"
    msg = f"{what} could not be placed: it {happened} ({cause})"
    return CopyNotPlaced(msg, permanent=permanent)


def failure_outcome(error: BaseException) -> Outcome:
    """The row of the ack table for ``error``, raised while planning or placing a
    delayed (or parked) copy: the one classification every asyncio executor uses.

    A :class:`CopyNotPlaced` says itself; a ``BackoffConfigError`` is a planning
    error; anything else is sorted as :func:`not_placed` sorts it (a closed channel
    or connection, a confirm timeout, a broker nack: transient; a refusal or a copy
    that cannot be encoded: permanent).
    """
    if isinstance(error, CopyNotPlaced):
        return error.outcome
    if isinstance(error, BackoffConfigError):
        return Outcome.PLANNING_ERROR
    return not_placed(error, "the copy").outcome
