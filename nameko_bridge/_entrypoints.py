"""What the retrying entrypoints share: the ack and failure table, carried out.

An entrypoint (``@rpc``, ``@consume``, ``@event_handler``) that raised ``Backoff``
(any :class:`aio_backoff.Backoff`, so also ``nameko_bridge.Backoff``) hands the
message to :func:`carry_out_backoff`, which sorts what happens next into an
:class:`aio_backoff.core.Outcome` and does what :func:`aio_backoff.core.decide`
says, the same table every executor of aio-backoff consults:

===========================  =========================================================
outcome                      the message (and an RPC caller)
===========================  =========================================================
retry placed                 delayed copy confirmed, *then* the original acked (also
                             with ``requeue_on_error``); RPC: no reply yet
retries spent                the entrypoint's result is ``Backoff.Expired``; the
                             message is kept (``on_expired``, default ``"keep"``):
                             rejected to its queue's dead-letter exchange when the
                             queue declares one, else parked in ``{queue}.parked``;
                             RPC: the caller gets ``RemoteError`` (``"Expired"``)
copy not placed, transient   (connection or channel closed, confirm timeout, nack)
                             a pause of ``FailurePolicy.pause(tries)``, then back on
                             its queue; parked at ``max_transient_tries``
copy not placed, permanent   (a refused declare, ACCESS_REFUSED, unroutable after a
or planning error            fresh declare, a header that cannot be encoded, a bad
                             ``Backoff``) dead-lettered or parked at once, the reason
                             in ``backoff-error``, one ERROR line; the entrypoint's
                             result is :class:`CopyNotPlaced`, also for an RPC caller
keeping the message failed   a pause, then back on its queue
===========================  =========================================================

The container is never killed for any of these. Other exceptions follow nameko's
own rule (acked, or requeued with ``requeue_on_error``; RPC replies the error).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import eventlet

from aio_backoff.core import Backoff as CoreBackoff
from aio_backoff.core import CopyNotPlaced, Outcome, Settle, decide
from aio_backoff.core._events import came_back, emit
from aio_backoff.core.nameko_wire import (
    backoff_call_id_stack,
)

from ._compat import message_settler
from .backoff import Backoff, as_nameko_expired, is_transient, message_id_of
from .constants import CALL_ID_STACK_HEADER_KEY

__all__ = [
    "ON_EXPIRED_CHOICES",
    "CopyNotPlaced",
    "ExcInfo",
    "OnExpired",
    "Verdict",
    "backoff_in",
    "carry_out_backoff",
    "check_on_expired",
    "expect_backoff_exception",
    "retry_headers",
    "tell_came_back",
]

log = logging.getLogger("nameko_bridge").getChild("entrypoints")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
OnExpired = Literal["keep", "park", "ack", "raise"]
ON_EXPIRED_CHOICES: tuple[OnExpired, ...] = ("keep", "park", "ack", "raise")


def expect_backoff_exception(expected_exceptions: Any) -> Any:
    """``expected_exceptions`` (a class or a tuple) with ``Backoff`` added.

    Adds ``nameko_bridge.Backoff`` and the core ``aio_backoff.Backoff`` (so that
    either one raised in an entrypoint counts as expected) unless already covered.
    """
    if isinstance(expected_exceptions, tuple):
        given: tuple[Any, ...] = expected_exceptions
    else:
        given = (expected_exceptions,)
    missing = tuple(cls for cls in (Backoff, CoreBackoff) if not issubclass(cls, given))
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
        "'keep' (the default; 'raise' is its old name) dead-letters the message "
        "when its queue has a dead-letter exchange, else parks it in "
        "'{queue}.parked'; 'park' always parks it; 'ack' acks it away, as "
        "nameko-amqp-retry did. The entrypoint's result is Backoff.Expired with "
        "each of them."
    )
    raise ValueError(msg)


def backoff_in(exc_info: ExcInfo | None) -> CoreBackoff | None:
    """The ``Backoff`` an entrypoint raised, if it raised one."""
    if exc_info is None:
        return None
    error = exc_info[1]
    return error if isinstance(error, CoreBackoff) else None


def retry_headers(message: Any, worker_ctx: Any) -> dict[str, Any]:
    """The headers a delayed copy starts from: the message's own, with the call-id
    stack of this worker whose own entry gains ``.backoff``.

    A new dict and a new list: neither the message nor the worker is changed.
    """
    headers = dict(message.headers or {})
    # never empty: it ends with this call
    headers[CALL_ID_STACK_HEADER_KEY] = backoff_call_id_stack(worker_ctx.call_id_stack)
    return headers


@dataclass(frozen=True)
class Verdict:
    """What is left for the entrypoint once :func:`carry_out_backoff` has acted."""

    settled: bool
    """True: the message is settled (acked, rejected or back on its queue) and an
    RPC caller is sent nothing now. False: the message is kept where it should be;
    the entrypoint acks it, and an RPC entrypoint first replies ``exc_info``."""
    exc_info: ExcInfo
    """The entrypoint's result: the ``Backoff``, ``Backoff.Expired`` or
    :class:`CopyNotPlaced`."""


def tell_came_back(entrypoint: Any, message: Any, queue: str) -> None:
    """Tell the hooks of ``entrypoint``'s publisher when ``message`` (from
    ``queue``) is a delayed copy that came back."""
    hooks = entrypoint.backoff_publisher.hooks_in_force.came_back
    if not hooks:
        return
    event = came_back(message.headers, queue=queue, message_id=message_id_of(message))
    if event is not None:
        emit(hooks, event)


def message_key(message: Any, queue: str) -> Hashable:
    """A key for ``message`` that is the same when it comes back from a requeue."""
    properties = message.properties or {}
    digest = hashlib.blake2b(digest_size=16)
    body = message.body
    digest.update(body if isinstance(body, bytes) else repr(body).encode())
    for value in (
        queue,
        properties.get("message_id"),
        properties.get("correlation_id"),
        sorted((message.headers or {}).items(), key=lambda item: str(item[0])),
    ):
        digest.update(b"\0" + repr(value).encode())
    return digest.digest()


def _exc_info(error: BaseException) -> ExcInfo:
    return type(error), error, error.__traceback__


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _Execution:
    """One message whose entrypoint raised ``Backoff``, carried through the table."""

    def __init__(
        self,
        entrypoint: Any,
        message: Any,
        *,
        target_queue: str,
        headers: Mapping[str, Any],
        on_expired: OnExpired,
        dead_letter_exchange: str | None,
    ) -> None:
        self.entrypoint = entrypoint
        self.message = message
        self.publisher = entrypoint.backoff_publisher
        self.settler = message_settler(entrypoint)
        self.target_queue = target_queue
        self.headers = headers
        self.on_expired = on_expired
        self.dead_letter_exchange = dead_letter_exchange
        self.key = message_key(message, target_queue)

    def run(self, backoff: CoreBackoff, raised: ExcInfo) -> Verdict:
        try:
            plan = self.publisher.plan(backoff, self.headers, self.target_queue)
        except CoreBackoff.Expired as spent:
            return self._expired(as_nameko_expired(spent))
        except Exception as error:  # noqa: BLE001 - a bad Backoff: kept, not retried
            return self._not_retried(Outcome.PLANNING_ERROR, error, tries=0)
        try:
            self.publisher.publish_copy(self.message, plan)
        except Exception as error:  # noqa: BLE001 - every failure has its row
            if not is_transient(error):
                return self._not_retried(Outcome.NOT_PLACED_PERMANENT, error, tries=0)
            tries = self.publisher.transient_tries.failed(self.key)
            action = decide(
                Outcome.NOT_PLACED_TRANSIENT,
                transient_tries=tries,
                policy=self.publisher.failure_policy,
            )
            if action.settle is Settle.REQUEUE_LATER:
                log.log(
                    action.level,
                    "the delayed copy of a message for queue %r was not placed (%s); "
                    "try %r of %r: back on its queue in %.3g s",
                    self.target_queue,
                    _reason(error),
                    tries,
                    self.publisher.failure_policy.max_transient_tries,
                    self.publisher.failure_policy.pause(tries),
                )
                self._requeue_later(tries)
                return Verdict(settled=True, exc_info=raised)
            return self._not_retried(Outcome.NOT_PLACED_TRANSIENT, error, tries=tries)
        self.publisher.transient_tries.clear(self.key)
        self.settler.ack_message(self.message)
        return Verdict(settled=True, exc_info=raised)

    def _expired(self, expired: Backoff.Expired) -> Verdict:
        action = decide(Outcome.EXPIRED)
        if self.on_expired == "ack":
            log.log(
                action.level,
                "retries spent for a message of queue %r: %s; acked (on_expired='ack')",
                self.target_queue,
                expired,
            )
            self.publisher.transient_tries.clear(self.key)
            return Verdict(settled=False, exc_info=_exc_info(expired))
        return self._keep(
            expired,
            level=action.level,
            what=f"retries spent ({expired})",
            park_only=self.on_expired == "park",
        )

    def _not_retried(
        self, outcome: Outcome, error: Exception, *, tries: int
    ) -> Verdict:
        action = decide(
            outcome, transient_tries=tries, policy=self.publisher.failure_policy
        )
        if outcome is Outcome.PLANNING_ERROR:
            what = f"the retry could not be planned ({_reason(error)})"
        elif outcome is Outcome.NOT_PLACED_TRANSIENT:
            what = (
                f"the delayed copy was not placed in {tries} tries in a row "
                f"({_reason(error)})"
            )
        else:
            what = f"the broker refused the delayed copy ({_reason(error)})"
        failure = CopyNotPlaced(
            f"{what}; the message of queue {self.target_queue!r} is kept instead of "
            "retried",
            permanent=True,  # kept for good: trying again will not happen
        )
        failure.__cause__ = error
        return self._keep(failure, level=action.level, what=what, park_only=False)

    def _keep(
        self, reason: BaseException, *, level: int, what: str, park_only: bool
    ) -> Verdict:
        """Dead-letter or park the message for ``reason``; when that fails too, it
        goes back on its queue after a pause."""
        exchange = None if park_only else self.dead_letter_exchange
        try:
            if exchange is not None and self.publisher.dead_letter_exchange_exists(
                exchange
            ):
                log.log(
                    level,
                    "%s: rejecting the message of queue %r to its dead-letter "
                    "exchange %r",
                    what,
                    self.target_queue,
                    exchange,
                )
                self._reject()
                self.publisher.transient_tries.clear(self.key)
                return Verdict(settled=True, exc_info=_exc_info(reason))
            parking = self.publisher.park(
                self.message, self.target_queue, reason, headers=self.headers
            )
        except Exception as error:  # noqa: BLE001 - kept by going back on the queue
            tries = self.publisher.transient_tries.failed(self.key)
            log.log(
                decide(Outcome.FINAL_ACTION_FAILED).level,
                "%s, and the message of queue %r could not be kept (%s); back on "
                "its queue in %.3g s",
                what,
                self.target_queue,
                _reason(error),
                self.publisher.failure_policy.pause(tries),
            )
            self._requeue_later(tries)
            return Verdict(settled=True, exc_info=_exc_info(reason))
        log.log(
            level,
            "%s: parked the message of queue %r in %r",
            what,
            self.target_queue,
            parking,
        )
        self.publisher.transient_tries.clear(self.key)
        return Verdict(settled=False, exc_info=_exc_info(reason))

    def _requeue_later(self, tries: int) -> None:
        # holds this worker's slot for the pause: the message cannot come straight
        # back to a free worker, and the container keeps taking other messages
        eventlet.sleep(self.publisher.failure_policy.pause(tries))
        self.settler.requeue_message(self.message)

    def _reject(self) -> None:
        message = self.message
        # as nameko's ack_message: a message of a dead connection is the broker's
        if message.channel.connection:
            message.reject(requeue=False)


def carry_out_backoff(
    entrypoint: Any,
    message: Any,
    backoff: CoreBackoff,
    raised: ExcInfo,
    *,
    target_queue: str,
    headers: Mapping[str, Any],
    on_expired: OnExpired,
    dead_letter_exchange: str | None = None,
) -> Verdict:
    """Retry ``message`` later, or keep it; never raises (bar the worker's kill).

    ``raised`` is the entrypoint's exc_info for ``backoff``; ``headers`` are the
    headers a copy starts from; ``dead_letter_exchange`` is the one the message's
    queue declares (None: none, or unknown).
    """
    execution = _Execution(
        entrypoint,
        message,
        target_queue=target_queue,
        headers=headers,
        on_expired=on_expired,
        dead_letter_exchange=dead_letter_exchange,
    )
    try:
        return execution.run(backoff, raised)
    except Exception:  # a bug of ours must not kill the container
        log.exception(
            "could not retry or keep a message of queue %r; it goes back on its queue",
            target_queue,
        )
        try:
            execution._requeue_later(
                execution.publisher.transient_tries.failed(execution.key)
            )
        except Exception:
            log.exception("could not requeue a message of queue %r", target_queue)
        return Verdict(settled=True, exc_info=raised)
