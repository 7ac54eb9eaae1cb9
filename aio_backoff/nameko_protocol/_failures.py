"""Which outcome a failed retry is: the one place that tells transient from permanent.

Placing a delayed copy (planning it, encoding it, declaring its topology, publishing
it) can fail. :func:`retry_failure` sorts the error into an
:class:`~aio_backoff.core.Outcome` for :func:`~aio_backoff.core.decide`:

- *transient*, it can heal by itself: the channel or the connection closed, a
  confirm or a flow-control block timed out;
- *permanent*, trying again fails the same way: the broker refused a declare or the
  copy (``PRECONDITION_FAILED``, ``ACCESS_REFUSED``, a nack, a copy returned again
  after a fresh declare), or a header cannot be encoded;
- a *planning error*: the ``Backoff`` subclass, its schedule or a per-raise delay is
  invalid (``ValueError``, ``TypeError``, ``ArithmeticError``).

A :class:`~aio_backoff.CopyNotPlaced` says itself which it is (its ``outcome``,
from the aio-pika layer's classification of the broker's answer) and is taken at
its word.
"""

from __future__ import annotations

import asyncio

from aiormq.exceptions import ChannelInvalidStateError

from ..aiopika._publisher import CopyNotPlaced
from ..core._outcome import Outcome

__all__ = ["TRANSIENT_ERRORS", "retry_failure"]

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ChannelInvalidStateError,  # the channel closed under the publish
    ConnectionError,  # the connection closed (aiormq's AMQPConnectionError too)
    asyncio.TimeoutError,  # no confirm in time
)
"""Errors that mean "not now" rather than "never"."""

_PLANNING_ERRORS = (ValueError, TypeError, ArithmeticError)


def _transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT_ERRORS)


def retry_failure(error: BaseException) -> Outcome:
    """The outcome of a retry whose copy was not placed because of ``error``."""
    if isinstance(error, CopyNotPlaced):
        return error.outcome
    if _transient(error):
        return Outcome.NOT_PLACED_TRANSIENT
    if isinstance(error, _PLANNING_ERRORS):
        return Outcome.PLANNING_ERROR
    return Outcome.NOT_PLACED_PERMANENT
