"""The ack and failure policy: one table from what happened to what to do.

Every executor (``Retrier``, ``BackoffRPC``, ``NamekoService`` and ``nameko_bridge``'s
entrypoints) sorts what happened to a message into an :class:`Outcome`, asks
:func:`decide` for the :class:`Action`, and carries it out. So the four of them cannot
drift: a change of policy is a change of this table. docs/reliability.md shows it.

==========================  ==========================  =======  ==============
outcome                     the message                 RPC      log
==========================  ==========================  =======  ==============
succeeded                   ack                         result   -
retry placed                ack (after the confirm)     -        info
copy not placed, transient  requeue after a pause; at   -        warning
                            the try limit: park
copy not placed, permanent  dead-letter or park         error    error
expired                     the final action            error    warning
handler error               the stack's own rule        error    info
undecodable                 dead-letter or park         error    error
planning error              dead-letter or park         error    error
final action failed         requeue after a pause       -        error
cancelled                   requeue at once             -        info
==========================  ==========================  =======  ==============

*Transient* is what can heal by itself: a closed channel or connection, a
flow-control block, a confirm that did not come in time. *Permanent* will fail the
same way every time: a bad ``Backoff`` configuration, a header that cannot be
encoded, a declare or publish the broker refuses. A permanent failure goes to its
final action at once, with one ERROR line, instead of coming back to the handler.

Nothing here talks to a broker.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "ACTIONS",
    "Action",
    "CopyNotPlaced",
    "FailurePolicy",
    "Outcome",
    "Reply",
    "Settle",
    "TransientTries",
    "decide",
]


class Outcome(enum.StrEnum):
    """What happened to a message, as far as its fate is concerned."""

    SUCCEEDED = "succeeded"
    """The handler returned."""
    RETRY_PLACED = "retry placed"
    """The handler asked for a retry and the broker confirmed the delayed copy."""
    NOT_PLACED_TRANSIENT = "copy not placed, transient"
    """The delayed (or parked) copy did not get a confirm, for a reason that can
    heal: channel or connection closed, flow control, confirm timeout."""
    NOT_PLACED_PERMANENT = "copy not placed, permanent"
    """The broker refused the copy or its topology, or the copy cannot be encoded:
    trying again fails the same way."""
    EXPIRED = "expired"
    """The handler asked for a retry and the limit is spent."""
    HANDLER_ERROR = "handler error"
    """The handler raised an exception that is not retried."""
    UNDECODABLE = "undecodable"
    """The message cannot even be given to the handler (a body or header the
    protocol cannot decode)."""
    PLANNING_ERROR = "planning error"
    """The retry could not be planned: the ``Backoff`` subclass, its schedule or a
    per-raise delay is invalid."""
    FINAL_ACTION_FAILED = "final action failed"
    """The final action (dead-letter, park, a user callback and its fallback) could
    not keep the message."""
    CANCELLED = "cancelled"
    """The handler was cancelled (the process is stopping)."""


class Settle(enum.StrEnum):
    """What is done with the message itself."""

    ACK = "ack"
    """Done with it (handled, or its delayed copy is confirmed)."""
    HANDLER_RULE = "the stack's rule for handler errors"
    """``Retrier``: reject (requeue with ``requeue_on_error``); nameko and
    ``NamekoService``: ack (requeue with ``requeue_on_error``)."""
    FINAL_ACTION = "the final action"
    """The configured ``on_expired`` action; it keeps the message by default."""
    DEAD_LETTER_OR_PARK = "dead-letter or park"
    """Reject to the queue's dead-letter exchange when it has one, else publish to
    ``{queue}.parked`` with the reason in a header, then ack."""
    REQUEUE_LATER = "requeue after a pause"
    """Wait :meth:`FailurePolicy.pause`, then ``nack(requeue=True)``."""
    REQUEUE_NOW = "requeue at once"
    """``nack(requeue=True)`` now (or leave it unsettled for the broker)."""


class Reply(enum.StrEnum):
    """What an RPC caller is sent now (consumers of plain messages send nothing)."""

    NONE = "nothing yet"
    RESULT = "the result"
    ERROR = "the error"


@dataclass(frozen=True)
class Action:
    """What an executor does for one :class:`Outcome`."""

    settle: Settle
    reply: Reply
    level: int
    """The level of the one log line for this decision."""


ACTIONS: Mapping[Outcome, Action] = MappingProxyType(
    {
        Outcome.SUCCEEDED: Action(Settle.ACK, Reply.RESULT, logging.DEBUG),
        Outcome.RETRY_PLACED: Action(Settle.ACK, Reply.NONE, logging.INFO),
        Outcome.NOT_PLACED_TRANSIENT: Action(
            Settle.REQUEUE_LATER, Reply.NONE, logging.WARNING
        ),
        Outcome.NOT_PLACED_PERMANENT: Action(
            Settle.DEAD_LETTER_OR_PARK, Reply.ERROR, logging.ERROR
        ),
        Outcome.EXPIRED: Action(Settle.FINAL_ACTION, Reply.ERROR, logging.WARNING),
        Outcome.HANDLER_ERROR: Action(Settle.HANDLER_RULE, Reply.ERROR, logging.INFO),
        Outcome.UNDECODABLE: Action(
            Settle.DEAD_LETTER_OR_PARK, Reply.ERROR, logging.ERROR
        ),
        Outcome.PLANNING_ERROR: Action(
            Settle.DEAD_LETTER_OR_PARK, Reply.ERROR, logging.ERROR
        ),
        Outcome.FINAL_ACTION_FAILED: Action(
            Settle.REQUEUE_LATER, Reply.NONE, logging.ERROR
        ),
        Outcome.CANCELLED: Action(Settle.REQUEUE_NOW, Reply.NONE, logging.INFO),
    }
)
"""The table: one action per outcome, the same on every stack."""

_GIVE_UP = Action(Settle.DEAD_LETTER_OR_PARK, Reply.ERROR, logging.ERROR)
"""A transient failure that kept coming back for one message: keep the message
where a person can see it instead of trying for ever."""


@dataclass(frozen=True)
class FailurePolicy:
    """How long transient failures are waited out, and for how many tries.

    - ``max_transient_tries``: a message whose copy failed transiently this many
      times in a row is dead-lettered or parked (``0``: never give up);
    - the pause before try ``n`` (1-based) goes back on the queue is
      ``min(first_pause_s * 2 ** (n - 1), max_pause_s)``.
    """

    max_transient_tries: int = 5
    first_pause_s: float = 1.0
    max_pause_s: float = 30.0

    def __post_init__(self) -> None:
        tries = self.max_transient_tries
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 0:
            msg = (
                "FailurePolicy(max_transient_tries=...) must be a whole number of "
                f"tries, 0 or more (0: never give up), got {tries!r}"
            )
            raise ValueError(msg)
        for name in ("first_pause_s", "max_pause_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                msg = (
                    f"FailurePolicy({name}=...) must be a finite number of seconds, "
                    f"0 or more, got {value!r}"
                )
                raise ValueError(msg)
        if self.first_pause_s > self.max_pause_s:
            msg = (
                f"FailurePolicy(first_pause_s={self.first_pause_s!r}) is longer than "
                f"max_pause_s={self.max_pause_s!r}; make the first pause the shorter"
            )
            raise ValueError(msg)

    def pause(self, tries: int) -> float:
        """Seconds to wait before failed try ``tries`` (1-based) goes back."""
        if tries <= 1:
            return self.first_pause_s
        exponent = min(tries - 1, 64)  # 2**64 * anything > max_pause_s
        return float(min(self.first_pause_s * 2.0**exponent, self.max_pause_s))

    def gives_up(self, tries: int) -> bool:
        """Whether ``tries`` transient failures in a row are enough to give up."""
        return 0 < self.max_transient_tries <= tries


DEFAULT_FAILURE_POLICY = FailurePolicy()


def decide(
    outcome: Outcome,
    *,
    transient_tries: int = 0,
    policy: FailurePolicy = DEFAULT_FAILURE_POLICY,
) -> Action:
    """The action for ``outcome``.

    ``transient_tries`` is how many times in a row this message's copy has now failed
    transiently (this failure included); at the policy's limit the message is
    dead-lettered or parked instead of going round again.
    """
    if outcome is Outcome.NOT_PLACED_TRANSIENT and policy.gives_up(transient_tries):
        return _GIVE_UP
    return ACTIONS[outcome]


class TransientTries:
    """Per-message counts of transient failures in a row, in a bounded memory.

    A message that goes back to its queue comes back as a new delivery, with nothing
    on it that says it failed before; the executor keys it (by message id, or by a
    digest of body and headers) and asks here. The oldest keys are forgotten first
    once ``max_keys`` are held; forgetting one only means that message gets its
    tries again, never that it is lost.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        if max_keys < 1:
            msg = f"TransientTries(max_keys=...) must be 1 or more, got {max_keys!r}"
            raise ValueError(msg)
        self._max_keys = max_keys
        self._tries: OrderedDict[Hashable, int] = OrderedDict()

    def failed(self, key: Hashable) -> int:
        """Count one more transient failure for ``key``; return the count."""
        tries = self._tries.pop(key, 0) + 1
        self._tries[key] = tries
        while len(self._tries) > self._max_keys:
            self._tries.popitem(last=False)
        return tries

    def peek(self, key: Hashable) -> int:
        """Failures counted for ``key`` so far."""
        return self._tries.get(key, 0)

    def clear(self, key: Hashable) -> None:
        """``key``'s message was settled for good: forget its failures."""
        self._tries.pop(key, None)

    def __len__(self) -> int:
        return len(self._tries)


class CopyNotPlaced(Exception):
    """The broker did not take a delayed (or parked) copy of a message: one class
    for every stack (``Retrier``, ``BackoffRPC``, ``NamekoService``,
    ``nameko_bridge``).

    ``permanent`` says whether trying again can help: ``True`` when the broker
    refused it (``ACCESS_REFUSED``, ``PRECONDITION_FAILED``, returned or
    ``NOT_FOUND`` also after a fresh declare), the copy cannot be encoded, or the
    transient failures reached their limit; ``False`` when it may heal (channel or
    connection closed, flow control, confirm timeout, broker nack).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled into an RPC error reply: keep the keyword through the round trip
        return (_rebuild, (type(self), str(self), self.permanent))

    @property
    def outcome(self) -> Outcome:
        """The row of the ack table this failure falls in."""
        if self.permanent:
            return Outcome.NOT_PLACED_PERMANENT
        return Outcome.NOT_PLACED_TRANSIENT


def _rebuild(kind: type[CopyNotPlaced], message: str, permanent: bool) -> CopyNotPlaced:
    return kind(message, permanent=permanent)


# Tracebacks and nameko's remote errors name the public path, not the private module.
CopyNotPlaced.__module__ = "aio_backoff"
