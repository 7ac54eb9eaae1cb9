"""The ``Backoff`` exception: what a handler raises to be retried later.

Subclass it to set a policy; the class attributes are read when a retry is planned,
so patching them (``patch.object(Backoff, "limit", 3)``) changes running consumers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from ._protocol import retries_done
from ._renames import UNSET
from ._schedule import Schedule, gauss_jitter, is_number, sequence
from ._topology import DEFAULT_DELAY_EXCHANGE, MAX_DELAY_MS

__all__ = ["Backoff", "BackoffConfigError", "RetryFor", "as_backoff", "backoff_class"]


RetryFor = tuple[type[BaseException], ...]
"""Exception classes that are retried as if a ``Backoff`` had been raised."""

_CHECKED_TUPLES: dict[int, tuple[tuple[float, ...], Schedule]] = {}
"""``id(schedule) -> (schedule, sequence(schedule))`` for tuple schedules: a tuple of
numbers cannot change, so it is checked once, not on every retry. Holding the tuple
keeps its id from being reused while it is here."""

_CHECKED_TUPLES_MAX = 256
"""Entries kept before the cache starts over (schedules are usually class constants)."""


class BackoffConfigError(ValueError, TypeError):
    """A ``Backoff`` policy (or a per-raise ``delay_ms``) that cannot plan a retry.

    Raised where a ``Backoff`` subclass is defined (``class``, or
    :func:`backoff_class`) when a setting is invalid, and when a retry is planned
    with a setting patched to an invalid value since: executors treat it as a
    *planning error* (the message goes to its dead-letter exchange or is parked,
    with the reason), never as a reason to try again. A ``ValueError`` and a
    ``TypeError``, for code that caught those before.
    """


def _schedule_problem(owner: str, schedule: object) -> str | None:
    """Why ``schedule`` (a class attribute of ``owner``) is invalid, or None."""
    if isinstance(schedule, staticmethod | classmethod) or callable(schedule):
        return None
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence):
        return (
            f"{owner}.schedule must be a sequence of ms or a callable "
            f"(index) -> ms, got {schedule!r}; write e.g. schedule = (1000, 2000) "
            "or schedule = exponential(100, cap_ms=60_000)"
        )
    if not schedule:
        return (
            f"{owner}.schedule needs at least one delay, got an empty sequence "
            f"{schedule!r}; write e.g. schedule = (1000,) (the last item repeats)"
        )
    for position, item in enumerate(schedule):
        if not is_number(item) or not math.isfinite(item):
            return (
                f"{owner}.schedule item {position} must be a finite number of "
                f"milliseconds, got {item!r}; write e.g. schedule = (1000, 2000), "
                f"at most {MAX_DELAY_MS} ms each"
            )
    return None


def _limit_problem(owner: str, limit: object) -> str | None:
    """Why ``limit`` is invalid (with what to write instead), or None."""
    if limit is None or (
        isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0
    ):
        return None
    if isinstance(limit, float) and limit.is_integer() and limit > 0:
        instead = f"limit = {int(limit)}"
    elif limit is True:
        instead = "limit = 1"
    elif isinstance(limit, str) and limit.isdigit():
        instead = f"limit = {int(limit)}"
    else:
        instead = "limit = None (or 0) to retry forever, or limit = 5"
    return (
        f"{owner}.limit must be a whole number of retries, or None/0 to retry "
        f"forever, got {limit!r}; write {instead}"
    )


def _jitter_problem(owner: str, name: str, value: object) -> str | None:
    """Why ``random_sigma`` / ``random_groups_per_sigma`` is invalid, or None."""
    if name == "random_sigma":
        if is_number(value) and math.isfinite(value) and value >= 0:
            return None
        return (
            f"{owner}.random_sigma must be 0 or more milliseconds (finite), got "
            f"{value!r}; write e.g. random_sigma = 100, or 0 for no jitter"
        )
    if is_number(value) and math.isfinite(value) and value > 0:
        return None
    return (
        f"{owner}.random_groups_per_sigma must be 1 or more, got {value!r}; write "
        "e.g. random_groups_per_sigma = 5, or random_sigma = 0 for no jitter"
    )


def _settings_problem(owner: str, settings: Mapping[str, object]) -> str | None:
    """The first invalid setting among ``settings`` (class attributes), or None."""
    problem: str | None = None
    if "schedule" in settings:
        problem = _schedule_problem(owner, settings["schedule"])
    if problem is None and "limit" in settings:
        problem = _limit_problem(owner, settings["limit"])
    for name in ("random_sigma", "random_groups_per_sigma"):
        if problem is None and name in settings:
            problem = _jitter_problem(owner, name, settings[name])
    return problem


def _checked_tuple(owner: str, schedule: tuple[float, ...]) -> Schedule:
    """``sequence(schedule)``, built and checked once per tuple."""
    entry = _CHECKED_TUPLES.get(id(schedule))
    if entry is not None:  # the entry holds the tuple: no other object has its id
        return entry[1]
    problem = _schedule_problem(owner, schedule)
    if problem is not None:
        raise BackoffConfigError(problem)
    checked = sequence(schedule)
    if len(_CHECKED_TUPLES) >= _CHECKED_TUPLES_MAX:
        _CHECKED_TUPLES.clear()
    _CHECKED_TUPLES[id(schedule)] = (schedule, checked)
    return checked


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, Any] | None: ...


class Backoff(Exception):
    """Raise to have the message delivered again later, on ``schedule``.

    - ``schedule``: delays in ms, the last one repeating; or a callable
      ``(index) -> ms`` such as :func:`aio_backoff.exponential`.
    - ``limit``: retries before ``Backoff.Expired``; ``None`` or ``0`` retries forever.
    - ``random_sigma``: ms of Gaussian jitter (0 turns it off); delays are rounded to
      ``random_sigma / random_groups_per_sigma`` ms so they share few delay queues.
    - ``delay_ms`` (per raise): use this delay for the next retry instead of the
      schedule, e.g. from an upstream ``Retry-After``; no jitter is added to it.

    The delay for retry index ``i`` (retries made so far) is
    ``|round(gauss(get_next_schedule_item(i), sigma), sigma / groups)|``, capped at
    ``MAX_DELAY_MS``.
    """

    schedule: ClassVar[Sequence[float] | Schedule] = (
        1000,
        2000,
        3000,
        5000,
        8000,
        13000,
        21000,
        34000,
        55000,
    )
    limit: ClassVar[int | None] = 20
    random_sigma: ClassVar[float] = 100
    random_groups_per_sigma: ClassVar[int] = 5

    class Expired(Exception):
        """Raised, chained from the ``Backoff``, once a message has used its retries.

        Attributes: ``retries`` (how many were made), ``limit`` and ``max_delay_ms``
        (the schedule's total delay over ``limit`` retries; approximate with jitter).
        """

        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            self.retries = 0
            self.limit = 0
            self.max_delay_ms = 0.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse an invalid setting where the subclass is defined."""
        super().__init_subclass__(**kwargs)
        problem = _settings_problem(cls.__qualname__, cls.__dict__)
        if problem is not None:
            raise BackoffConfigError(problem)

    def __init__(self, *args: object, delay_ms: float | None = None) -> None:
        """``delay_ms`` is checked when the retry is planned, not here: an invalid
        one is then a planning error (the message is kept, with the reason) rather
        than an exception out of the handler's ``raise``."""
        super().__init__(*args)
        self.delay_ms = delay_ms
        self._total_attempts: int | None = None
        self._next_expiration: int | None = None

    # -- schedule --------------------------------------------------------------

    @classmethod
    def get_next_schedule_item(cls, index: int) -> float:
        """The scheduled delay (ms, before jitter) after ``index`` retries.

        Override for a dynamic schedule, or assign a schedule helper:
        ``get_next_schedule_item = staticmethod(exponential(100, cap_ms=5000))``.
        """
        schedule = cls.schedule
        if type(schedule) is tuple:
            return _checked_tuple(cls.__name__, schedule)(index)
        if callable(schedule):
            return schedule(index)
        problem = _schedule_problem(cls.__name__, schedule)
        if problem is not None:  # patched since the class was defined
            raise BackoffConfigError(problem)
        return sequence(schedule)(index)

    @classmethod
    def effective_limit(cls) -> int | None:
        """``limit`` checked, with 0 read as None (retry forever)."""
        limit = cls.limit
        if type(limit) is int and limit > 0:  # the usual case, checked fast
            return limit
        problem = _limit_problem(cls.__name__, limit)
        if problem is not None:  # patched since the class was defined
            raise BackoffConfigError(problem)
        return limit or None

    @property
    def max_delay(self) -> float:
        """Total scheduled delay in ms over ``limit`` retries (``inf`` if unlimited)."""
        limit = self.effective_limit()
        if limit is None:
            return math.inf
        schedule = type(self).schedule
        plain = type(self).get_next_schedule_item.__func__ is (  # type: ignore[attr-defined]
            Backoff.get_next_schedule_item.__func__  # type: ignore[attr-defined]
        )
        if plain and isinstance(schedule, list | tuple) and schedule:
            # closed form for a plain sequence, so huge limits cost nothing
            head = [abs(item) for item in schedule[:limit]]
            repeats = max(0, limit - len(schedule))
            return float(sum(head) + repeats * abs(schedule[-1]))
        return sum(abs(self.get_next_schedule_item(i)) for i in range(limit))

    @classmethod
    def _gauss(cls, mu: float, sigma: float) -> float:
        """The jitter draw. A hook so that nameko_bridge can draw from its module."""
        return random.gauss(mu, sigma)

    # -- planning --------------------------------------------------------------

    def expired(self, retries: int) -> Backoff.Expired:
        """The ``Expired`` error for a message that has had ``retries`` retries."""
        limit = self.effective_limit() or retries
        max_delay = self.max_delay
        error = self.Expired(
            f"Backoff aborted after '{limit}' retries (~{max_delay / 1000:.0f} seconds)"
        )
        error.retries = retries
        error.limit = limit
        error.max_delay_ms = max_delay
        return error

    def compute_next(self, retries: int) -> int:
        """The delay in ms for the next retry of a message retried ``retries`` times.

        Raises ``Backoff.Expired`` (chained from this ``Backoff``) once ``retries``
        reaches ``limit``. Stores the result so that ``str()`` can describe it.
        Raises :class:`BackoffConfigError` when the policy (as patched now) or the
        per-raise ``delay_ms`` cannot give a delay.
        """
        if retries < 0:
            msg = f"retries must be 0 or more, got {retries}"
            raise ValueError(msg)
        limit = self.effective_limit()
        if limit is not None and retries >= limit:
            self._total_attempts = retries
            self._next_expiration = None
            raise self.expired(retries) from self

        if self.delay_ms is not None:
            delay = int(min(self._checked_delay_ms(), MAX_DELAY_MS))
        else:
            scheduled = self.get_next_schedule_item(retries)
            if type(scheduled) is not int:  # a plain int needs neither check
                if not is_number(scheduled):
                    msg = (
                        f"{type(self).__name__}.get_next_schedule_item({retries}) "
                        f"must return a number of ms, got {scheduled!r}"
                    )
                    raise BackoffConfigError(msg)
                if math.isnan(scheduled):
                    msg = (
                        f"{type(self).__name__}.get_next_schedule_item({retries}) "
                        "returned NaN; return a number of ms (inf means the longest "
                        "delay)"
                    )
                    raise BackoffConfigError(msg)
            scheduled = max(-MAX_DELAY_MS, min(scheduled, MAX_DELAY_MS))
            try:
                delay = gauss_jitter(
                    scheduled,
                    sigma_ms=self.random_sigma,
                    groups_per_sigma=self.random_groups_per_sigma,
                    gauss=self._gauss,
                )
            except (TypeError, ValueError) as error:  # jitter patched since
                owner = type(self).__name__
                jitter = {
                    "random_sigma": self.random_sigma,
                    "random_groups_per_sigma": self.random_groups_per_sigma,
                }
                problem = _settings_problem(owner, jitter) or f"{owner}: {error}"
                raise BackoffConfigError(problem) from error
        delay = min(abs(delay), MAX_DELAY_MS)
        self._total_attempts = retries
        self._next_expiration = delay
        return delay

    def _checked_delay_ms(self) -> float:
        delay_ms = self.delay_ms
        if not is_number(delay_ms) or math.isnan(delay_ms) or delay_ms < 0:
            msg = (
                f"{type(self).__name__}(delay_ms=...) must be 0 or more ms, got "
                f"{delay_ms!r}; raise it with e.g. delay_ms=1500, or without "
                "delay_ms to use the schedule"
            )
            raise BackoffConfigError(msg)
        return delay_ms

    def next(
        self,
        message: _HasHeaders,
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        *,
        backoff_exchange_name: str = UNSET,
    ) -> int:
        """Plan the next retry of ``message`` (anything with ``.headers``).

        Counts the retries from the protocol headers (see ``docs/protocol.md``), the
        legacy ``x-death`` ones out of ``delay_exchange``, and returns
        :meth:`compute_next` of that count. ``backoff_exchange_name=`` is
        nameko-amqp-retry's name of ``delay_exchange`` and works the same.
        """
        if backoff_exchange_name is not UNSET:
            delay_exchange = backoff_exchange_name
        return self.compute_next(retries_done(message.headers, delay_exchange))

    @property
    def retry_number(self) -> int | None:
        """1-based number of the planned retry, once planned."""
        return None if self._total_attempts is None else self._total_attempts + 1

    @property
    def next_delay_ms(self) -> int | None:
        """The planned delay in ms, once planned."""
        return self._next_expiration

    def __str__(self) -> str:
        if self._total_attempts is None:
            return "Backoff(uninitialised)"
        if self._next_expiration is None:
            return f"Backoff(expired after {self._total_attempts} retries)"
        return (
            f"Backoff(retry #{self._total_attempts + 1} in {self._next_expiration}ms)"
        )


def backoff_class(
    *,
    schedule: Sequence[float] | Schedule | None = None,
    limit: int | None = None,
    random_sigma: float | None = None,
    random_groups_per_sigma: int | None = None,
    base: type[Backoff] = Backoff,
    name: str = "CustomBackoff",
) -> type[Backoff]:
    """A ``Backoff`` subclass with the given settings; ``None`` keeps ``base``'s.

    The defaults are read now, when the class is made.
    """
    attributes: dict[str, Any] = {
        "schedule": base.schedule if schedule is None else schedule,
        "limit": base.limit if limit is None else limit,
        "random_sigma": base.random_sigma if random_sigma is None else random_sigma,
        "random_groups_per_sigma": (
            base.random_groups_per_sigma
            if random_groups_per_sigma is None
            else random_groups_per_sigma
        ),
        "__module__": base.__module__,
    }
    if callable(attributes["schedule"]):
        attributes["schedule"] = staticmethod(attributes["schedule"])
    return type(name, (base,), attributes)


def as_backoff(
    error: BaseException,
    retry_for: RetryFor,
    backoff: type[Backoff],
) -> Backoff | None:
    """``error`` as a ``Backoff``: itself, a ``backoff`` chained from it, or None.

    An upstream expiry is not retried again, so that retries do not multiply along
    a chain of services: a ``Backoff.Expired`` (also
    :class:`aio_backoff.core.nameko_wire.RemoteExpired`) or nameko's ``RemoteError``
    whose ``exc_type`` is ``"Expired"`` gives None even when ``retry_for`` covers it
    (``Exception`` does), unless ``retry_for`` names ``Backoff.Expired`` (or a
    subclass of it) itself.
    """
    if isinstance(error, Backoff):
        return error
    if not retry_for or not isinstance(error, retry_for):
        return None
    if _is_expiry(error) and not any(
        isinstance(kind, type) and issubclass(kind, Backoff.Expired)
        for kind in retry_for
    ):
        return None
    converted = backoff()
    converted.__cause__ = error
    return converted


def _is_expiry(error: BaseException) -> bool:
    """Whether ``error`` says that retries were spent upstream: a ``Backoff.Expired``,
    or a remote error (nameko's ``RemoteError``) whose ``exc_type`` is ``"Expired"``."""
    return (
        isinstance(error, Backoff.Expired)
        or getattr(error, "exc_type", None) == "Expired"
    )


# Tracebacks and nameko's remote errors name the public path, not the private module.
Backoff.__module__ = "aio_backoff"
Backoff.Expired.__module__ = "aio_backoff"
