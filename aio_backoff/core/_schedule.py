"""Delay schedules: where the delay before the next retry is computed.

A schedule is any callable ``(index) -> delay_ms`` where ``index`` is the number of
retries already made (0 for the first retry). The helpers here build such callables
and compose: ``capped(full_jitter(exponential(100)), 5000)`` jitters first and then
applies the cap, so the cap always holds.

Nothing here talks to a broker.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import TypeGuard

__all__ = [
    "Schedule",
    "capped",
    "exponential",
    "fixed",
    "full_jitter",
    "gauss_jitter",
    "round_to_nearest",
    "sequence",
]

Schedule = Callable[[int], float]
"""A callable mapping the number of retries made so far to a delay in ms."""


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is a real number (an int or a float, and not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_index(index: int) -> None:
    if index < 0:
        msg = f"schedule index must be 0 or more (retries already made), got {index}"
        raise ValueError(msg)


def _check_delay(name: str, value: float) -> None:
    if not is_number(value):
        msg = f"{name} must be a number of milliseconds, got {value!r}"
        raise TypeError(msg)
    if math.isnan(value) or value < 0:
        msg = f"{name} must be 0 or more milliseconds, got {value!r}"
        raise ValueError(msg)


def fixed(delay_ms: float) -> Schedule:
    """The same delay for every retry: ``delay(i) = delay_ms``."""
    _check_delay("fixed(delay_ms)", delay_ms)

    def schedule(index: int) -> float:
        _check_index(index)
        return delay_ms

    return schedule


def sequence(items: Sequence[float]) -> Schedule:
    """nameko-style schedule: ``delay(i) = items[min(i, len(items) - 1)]``.

    Past its end the last item repeats. Items may be negative (the caller decides what
    a negative delay means; :class:`~aio_backoff.Backoff` makes it positive).
    """
    values = tuple(items)
    if not values:
        msg = "sequence() needs at least one delay, got an empty sequence"
        raise ValueError(msg)
    for position, item in enumerate(values):
        if not is_number(item):
            msg = (
                f"schedule item {position} must be a number of milliseconds, "
                f"got {item!r}"
            )
            raise TypeError(msg)

    last = len(values) - 1

    def schedule(index: int) -> float:
        _check_index(index)
        return values[min(index, last)]

    return schedule


def exponential(
    initial_ms: float,
    *,
    factor: float = 2.0,
    cap_ms: float | None = None,
) -> Schedule:
    """Exponential growth with an optional cap.

    ``delay(i) = min(initial_ms * factor ** i, cap_ms)``

    Safe for huge indexes: a power that overflows saturates at ``float("inf")``
    (and so at the cap when there is one); without a cap the value can be infinite,
    which is why a cap is strongly advised.
    """
    _check_delay("exponential(initial_ms)", initial_ms)
    if not is_number(factor):
        msg = f"exponential(factor) must be a number of 1 or more, got {factor!r}"
        raise TypeError(msg)
    if not factor >= 1:  # also rejects NaN
        msg = f"exponential(factor) must be a number of 1 or more, got {factor!r}"
        raise ValueError(msg)
    if cap_ms is not None:
        _check_delay("exponential(cap_ms)", cap_ms)

    def schedule(index: int) -> float:
        _check_index(index)
        if initial_ms == 0:
            return 0.0
        try:
            value = initial_ms * math.pow(factor, index)
        except OverflowError:
            value = math.inf
        if cap_ms is not None:
            return min(value, cap_ms)
        return value

    return schedule


def full_jitter(
    schedule: Schedule,
    *,
    rng: Callable[[float, float], float] = random.uniform,
) -> Schedule:
    """ "Full jitter": a uniformly random delay between 0 and the wrapped delay.

    ``delay(i) = uniform(0, schedule(i))``
    """

    def jittered(index: int) -> float:
        upper = schedule(index)
        if math.isinf(upper):
            return math.inf
        return rng(0.0, abs(upper))

    return jittered


def capped(schedule: Schedule, cap_ms: float) -> Schedule:
    """Never more than ``cap_ms``: ``delay(i) = min(schedule(i), cap_ms)``."""
    _check_delay("capped(cap_ms)", cap_ms)

    def limited(index: int) -> float:
        return min(schedule(index), cap_ms)

    return limited


def round_to_nearest(value: float, interval: float) -> int:
    """``value`` rounded to the nearest multiple of ``interval``, as an int.

    ``round_to_nearest(value, interval) = int(interval * round(value / interval))``
    """
    if not interval or not math.isfinite(interval):
        msg = f"round_to_nearest() needs a non-zero finite interval, got {interval!r}"
        raise ValueError(msg)
    return int(interval * round(float(value) / interval))


def gauss_jitter(
    delay_ms: float,
    *,
    sigma_ms: float,
    groups_per_sigma: int,
    gauss: Callable[[float, float], float] = random.gauss,
) -> int:
    """nameko-amqp-retry's jitter, the default of :class:`~aio_backoff.Backoff`.

    ``delay = |round_to_nearest(int(gauss(delay_ms, sigma_ms)), sigma_ms / groups)|``

    Rounding to ``sigma / groups`` ms keeps the number of distinct delays (and so of
    delay queues on the broker) small. With ``sigma_ms == 0`` the delay is only made a
    non-negative int.
    """
    _check_delay("random_sigma", sigma_ms)
    if math.isinf(sigma_ms):
        msg = f"random_sigma must be a finite number of milliseconds, got {sigma_ms!r}"
        raise ValueError(msg)
    if not sigma_ms:
        return abs(int(delay_ms))
    if not is_number(groups_per_sigma) or not groups_per_sigma > 0:  # and NaN
        msg = (
            f"random_groups_per_sigma must be 1 or more, got {groups_per_sigma!r}; "
            "set random_sigma = 0 to turn jitter off instead"
        )
        raise ValueError(msg)
    randomised = int(gauss(delay_ms, sigma_ms))
    return abs(round_to_nearest(randomised, sigma_ms / groups_per_sigma))
