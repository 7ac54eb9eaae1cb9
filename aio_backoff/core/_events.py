"""What observers are told: one event vocabulary for every stack, and its hooks.

Each executor (``Retrier`` and through it FastStream and ``BackoffRPC``,
``NamekoService``, ``nameko_bridge``) builds the same small frozen events and hands
them to :class:`Hooks`. A hook is a plain callable ``(event) -> object``; a hook that
raises is logged (with its traceback) and swallowed, so it never changes what happens
to the message. With no hook for an event, the executor builds no event object: it
checks ``hooks.scheduled`` (a tuple, empty when nothing listens) first.

========================  ========================================================
event                     when
========================  ========================================================
:class:`Scheduled`        a delayed copy was placed (confirmed by the broker)
:class:`CameBack`         a delayed copy came back to its queue (with its lateness)
:class:`Expired`          a message asked for a retry and the limit was spent
:class:`NotPlaced`        a delayed copy was not placed (transient or permanent)
:class:`Parked`           a message was parked in ``{queue}.parked``
:class:`Replayed`         a waiting or parked copy was delivered again by hand
========================  ========================================================

Nothing here talks to a broker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from ._plan import RetryPlan, cause_name
from ._protocol import DELAY_HEADER, DUE_HEADER, RETRIES_HEADER, retries_done

__all__ = [
    "NO_HOOKS",
    "CameBack",
    "Event",
    "Expired",
    "Hook",
    "Hooks",
    "NotPlaced",
    "Parked",
    "Replayed",
    "Scheduled",
    "came_back",
    "emit",
    "expired",
    "not_placed",
    "retry_fields",
    "scheduled",
    "tell_replayed",
]

log = logging.getLogger("aio_backoff").getChild("hooks")


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A delayed copy was placed: retry ``attempt`` of ``limit`` in ``delay_ms``."""

    queue: str
    """The target queue (where the copy comes back)."""
    message_id: str | None
    attempt: int
    """1-based: the copy is retry number ``attempt``."""
    limit: int | None
    delay_ms: int
    exception_type: str
    """The name of the exception that asked for the retry (``Backoff`` or a
    ``retry_for`` exception)."""


@dataclass(frozen=True, slots=True)
class CameBack:
    """A delayed copy came back: ``lateness_ms`` is when it came minus when it was
    due (``None`` for a copy without the ``backoff-due`` header)."""

    queue: str
    message_id: str | None
    attempt: int
    delay_ms: int | None
    lateness_ms: int | None


@dataclass(frozen=True, slots=True)
class Expired:
    """A message asked for a retry after its last one: the final action follows."""

    queue: str
    message_id: str | None
    attempt: int
    """The retries it had (the limit)."""
    limit: int | None
    exception_type: str


@dataclass(frozen=True, slots=True)
class NotPlaced:
    """A delayed copy was not placed; ``permanent`` says whether trying again can
    help (the ack table's two rows)."""

    queue: str
    message_id: str | None
    attempt: int | None
    limit: int | None
    delay_ms: int | None
    permanent: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Parked:
    """A message was published to ``parking_queue`` with ``reason``."""

    queue: str
    message_id: str | None
    parking_queue: str
    reason: str


@dataclass(frozen=True, slots=True)
class Replayed:
    """A copy waiting in ``source`` was delivered to ``queue`` again by hand."""

    queue: str
    message_id: str | None
    source: str


Event: TypeAlias = Scheduled | CameBack | Expired | NotPlaced | Parked | Replayed
Hook: TypeAlias = Callable[[Any], object]
"""``hook(event)``: a plain callable; what it returns is ignored."""

_KINDS = ("scheduled", "came_back", "expired", "not_placed", "parked", "replayed")


def _hooks(value: Hook | Iterable[Hook] | None, name: str) -> tuple[Hook, ...]:
    if value is None:
        return ()
    if callable(value):
        return (value,)
    hooks = tuple(value)
    for hook in hooks:
        if not callable(hook):
            msg = f"Hooks({name}=...) takes callables, got {hook!r}"
            raise TypeError(msg)
    return hooks


class Hooks:
    """The callables to tell about each kind of event.

    ``Hooks(scheduled=f, expired=[g, h])``; ``every=`` adds a callable to every kind
    (it receives any :data:`Event`). ``a + b`` calls both sets. Each attribute is a
    tuple, empty when nothing listens for that kind.
    """

    __slots__ = _KINDS

    scheduled: tuple[Hook, ...]
    came_back: tuple[Hook, ...]
    expired: tuple[Hook, ...]
    not_placed: tuple[Hook, ...]
    parked: tuple[Hook, ...]
    replayed: tuple[Hook, ...]

    def __init__(
        self,
        *,
        scheduled: Hook | Iterable[Hook] | None = None,
        came_back: Hook | Iterable[Hook] | None = None,
        expired: Hook | Iterable[Hook] | None = None,
        not_placed: Hook | Iterable[Hook] | None = None,
        parked: Hook | Iterable[Hook] | None = None,
        replayed: Hook | Iterable[Hook] | None = None,
        every: Hook | Iterable[Hook] | None = None,
    ) -> None:
        given = {
            "scheduled": scheduled,
            "came_back": came_back,
            "expired": expired,
            "not_placed": not_placed,
            "parked": parked,
            "replayed": replayed,
        }
        common = _hooks(every, "every")
        for kind in _KINDS:
            object.__setattr__(self, kind, _hooks(given[kind], kind) + common)

    def __add__(self, other: Hooks) -> Hooks:
        if not isinstance(other, Hooks):
            return NotImplemented
        both = {kind: getattr(self, kind) + getattr(other, kind) for kind in _KINDS}
        return Hooks(**both)

    def __bool__(self) -> bool:
        return any(getattr(self, kind) for kind in _KINDS)

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(getattr(self, kind))}" for kind in _KINDS)
        return f"Hooks({counts})"


NO_HOOKS = Hooks()
"""Nothing listens."""


def emit(hooks: tuple[Hook, ...], event: Event) -> None:
    """Call each of ``hooks`` with ``event``; log and swallow what they raise."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            log.exception(
                "hook %r failed on %r; the message is handled as if it had not",
                hook,
                event,
            )


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return int(value)


def came_back(
    headers: Mapping[str, Any] | None,
    *,
    queue: str,
    message_id: str | None,
    now_ms: int | None = None,
) -> CameBack | None:
    """The :class:`CameBack` of a delivery with these headers, or ``None`` when it
    is no delayed copy (no ``backoff-retries``)."""
    if not headers:
        return None
    attempt = _int(headers.get(RETRIES_HEADER))
    if attempt is None:
        return None
    due = _int(headers.get(DUE_HEADER))
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    return CameBack(
        queue=queue,
        message_id=message_id,
        attempt=attempt,
        delay_ms=_int(headers.get(DELAY_HEADER)),
        lateness_ms=None if due is None else now_ms - due,
    )


def scheduled(plan: RetryPlan, message_id: str | None) -> Scheduled:
    """The :class:`Scheduled` of a placed ``plan``."""
    return Scheduled(
        queue=plan.routing_key,
        message_id=message_id,
        attempt=plan.retry_number,
        limit=plan.limit,
        delay_ms=plan.delay_ms,
        exception_type=plan.cause,
    )


def not_placed(
    plan: RetryPlan | None,
    *,
    queue: str,
    message_id: str | None,
    permanent: bool,
    reason: str,
) -> NotPlaced:
    """The :class:`NotPlaced` of ``plan`` (``None``: a parked copy)."""
    return NotPlaced(
        queue=queue,
        message_id=message_id,
        attempt=None if plan is None else plan.retry_number,
        limit=None if plan is None else plan.limit,
        delay_ms=None if plan is None else plan.delay_ms,
        permanent=permanent,
        reason=reason,
    )


def expired(
    backoff: BaseException,
    headers: Mapping[str, Any] | None,
    *,
    queue: str,
    message_id: str | None,
    delay_exchange: str,
) -> Expired:
    """The :class:`Expired` of a message with ``headers`` that raised ``backoff``."""
    limit: int | None
    try:
        limit = backoff.effective_limit()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the event says what it can
        limit = None
    return Expired(
        queue=queue,
        message_id=message_id,
        attempt=retries_done(headers, delay_exchange),
        limit=limit if isinstance(limit, int) else None,
        exception_type=cause_name(backoff),
    )


def retry_fields(
    queue: str,
    message_id: str | None,
    attempt: int | None = None,
    limit: int | None = None,
    delay_ms: int | None = None,
    *,
    outcome: str | None = None,
) -> dict[str, Any]:
    """The structured fields of a retry decision's log line (``extra=``).

    Prefixed with ``backoff_`` so that they never collide with a ``LogRecord``'s
    own attributes: ``backoff_queue``, ``backoff_message_id``, ``backoff_attempt``,
    ``backoff_limit``, ``backoff_delay_ms``, ``backoff_outcome``.
    """
    return {
        "backoff_queue": queue,
        "backoff_message_id": message_id,
        "backoff_attempt": attempt,
        "backoff_limit": limit,
        "backoff_delay_ms": delay_ms,
        "backoff_outcome": outcome,
    }


def tell_replayed(
    hooks: Hooks, *, queue: str, message_id: str | None, source: str
) -> None:
    """Tell ``hooks`` that a copy from ``source`` was delivered to ``queue`` again
    (for whatever replays copies: :func:`~aio_backoff.replay_undeliverable`, the
    command line's ``replay``)."""
    if hooks.replayed:
        emit(
            hooks.replayed, Replayed(queue=queue, message_id=message_id, source=source)
        )
