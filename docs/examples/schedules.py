"""Backoff policies and the delays they plan, without a broker.

Prints the delay each policy plans for its first retries, then the ``Expired`` error
once the limit is spent::

    .venv/bin/python docs/examples/schedules.py
"""

from __future__ import annotations

import random

from aio_backoff import Backoff, capped, exponential, full_jitter


class Fixed(Backoff):
    """nameko-amqp-retry style: a sequence of ms whose last item repeats."""

    schedule = (100, 200, 500)
    limit = 5
    random_sigma = 0  # no Gaussian jitter, so the output is predictable


class Exponential(Backoff):
    """100 ms doubling, never more than 1 s."""

    schedule = exponential(100, factor=2, cap_ms=1000)
    limit = 6
    random_sigma = 0


class FullJitter(Backoff):
    """A uniformly random delay up to the exponential one; the cap still holds."""

    schedule = capped(full_jitter(exponential(100), rng=random.Random(7).uniform), 800)
    limit = 6
    random_sigma = 0


class Dynamic(Backoff):
    """A schedule computed per retry: 50 ms more each time."""

    limit = 4
    random_sigma = 0

    @classmethod
    def get_next_schedule_item(cls, index: int) -> float:
        return 50 * (index + 1)


def planned(policy: type[Backoff]) -> str:
    """Each retry's delay, as a consumer would plan it, until the limit is spent."""
    delays = []
    retries = 0
    while True:
        try:
            delays.append(policy().compute_next(retries))
        except Backoff.Expired as expired:
            return f"{policy.__name__:12} {delays} -> {expired}"
        retries += 1


def main() -> None:
    for policy in (Fixed, Exponential, FullJitter, Dynamic):
        print(planned(policy))

    # An upstream said "Retry-After: 3": this one retry waits exactly 3 s.
    retry_after = Fixed(delay_ms=3 * 1000)
    retry_after.compute_next(0)
    print(f"Retry-After  {retry_after}")


if __name__ == "__main__":
    main()
