"""Delay queue names and arguments, and the lease book that decides re-declares."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import (
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    MAX_DELAY_MS,
    DelayQueue,
    LeaseBook,
    delay_queue,
    delay_queue_name,
    parking_queue_name,
)
from tests.core.strategies import PROPERTY, queue_delays_ms

pytestmark = pytest.mark.core

RABBITMQ_MAX_EXPIRES_MS = 2**32 - 1


def test_constants() -> None:
    assert DEFAULT_DELAY_EXCHANGE == "backoff"
    assert DEFAULT_GRACE_MS == 5000
    assert MAX_DELAY_MS == RABBITMQ_MAX_EXPIRES_MS - 3_600_000


def test_names() -> None:
    assert delay_queue_name(1000) == "backoff--1000ms"
    assert delay_queue_name(0) == "backoff--0ms"
    assert parking_queue_name("orders") == "orders.parked"


def test_delay_queue_as_nameko_amqp_retry_declares_it() -> None:
    queue = DelayQueue(1000)
    assert queue.name == "backoff--1000ms"
    assert queue.delay_exchange == "backoff"
    assert queue.grace_ms == 5000
    assert queue.arguments == {"x-expires": 6000, "x-dead-letter-exchange": ""}
    assert queue.binding_arguments == {"backoff": 1000, "x-match": "any"}


def test_delay_queue_on_another_exchange_with_another_grace() -> None:
    queue = delay_queue(250, delay_exchange="retries", grace_ms=60_000)
    assert queue == DelayQueue(delay_ms=250, delay_exchange="retries", grace_ms=60_000)
    assert queue.name == "backoff--250ms"
    assert queue.arguments["x-expires"] == 60_250
    assert queue.binding_arguments == {"backoff": 250, "x-match": "any"}


def test_delay_queue_is_frozen_and_hashable() -> None:
    queue = DelayQueue(10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        queue.delay_ms = 20  # type: ignore[misc]
    assert {queue, DelayQueue(10)} == {DelayQueue(10)}


def test_arguments_are_fresh_dicts() -> None:
    queue = DelayQueue(10)
    queue.arguments["x-expires"] = 1
    queue.binding_arguments["backoff"] = 1
    assert queue.arguments["x-expires"] == 5010
    assert queue.binding_arguments["backoff"] == 10


@PROPERTY
@given(delay=queue_delays_ms)
def test_every_valid_delay_gives_arguments_rabbitmq_accepts(delay: int) -> None:
    queue = DelayQueue(delay)
    assert queue.name == f"backoff--{delay}ms"
    assert 0 < queue.arguments["x-expires"] <= RABBITMQ_MAX_EXPIRES_MS
    assert queue.arguments["x-expires"] - delay == DEFAULT_GRACE_MS
    assert queue.binding_arguments["backoff"] == delay


@pytest.mark.parametrize(
    ("delay", "error", "text"),
    [
        (1.5, TypeError, "a delay queue needs a whole number of ms, got 1.5"),
        ("100", TypeError, "got '100'"),
        (True, TypeError, "got True"),
        (-1, ValueError, f"a delay must be between 0 and {MAX_DELAY_MS} ms, got -1"),
        (MAX_DELAY_MS + 1, ValueError, f"got {MAX_DELAY_MS + 1}"),
    ],
)
def test_delay_values_are_validated(
    delay: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        DelayQueue(delay)
    assert text in str(caught.value)


@pytest.mark.parametrize("grace", [0, -5, 1.5, True, "5000"])
def test_grace_values_are_validated(grace: Any) -> None:
    with pytest.raises(ValueError, match="grace period must be a whole number of ms"):
        DelayQueue(100, grace_ms=grace)


def test_expires_must_stay_within_rabbitmqs_limit() -> None:
    DelayQueue(MAX_DELAY_MS, grace_ms=3_600_000)
    with pytest.raises(ValueError, match=r"passes RabbitMQ's limit of 4294967295 ms"):
        DelayQueue(MAX_DELAY_MS, grace_ms=3_600_001)


# -- LeaseBook -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


def test_a_queue_needs_declaring_first_and_again_after_half_the_grace() -> None:
    clock = FakeClock()
    book = LeaseBook(clock=clock)
    queue = DelayQueue(1000)
    assert book.needs_declare(queue)
    book.declared(queue)
    assert not book.needs_declare(queue)
    clock.advance_ms(2499)
    assert not book.needs_declare(queue)
    clock.advance_ms(1)
    assert book.needs_declare(queue)
    book.declared(queue)
    assert not book.needs_declare(queue)


@PROPERTY
@given(
    grace=st.integers(min_value=1, max_value=3_600_000),
    elapsed=st.integers(min_value=0, max_value=10_000_000),
)
def test_renewal_follows_the_grace_of_the_queue(grace: int, elapsed: int) -> None:
    clock = FakeClock()
    book = LeaseBook(clock=clock)
    queue = DelayQueue(100, grace_ms=grace)
    book.declared(queue)
    clock.now += elapsed / 1000
    # the exact boundary (checked above) is left out: float seconds could round
    # either way there
    if elapsed * 2 > grace:
        assert book.needs_declare(queue)
    elif elapsed * 2 < grace:
        assert not book.needs_declare(queue)


def test_leases_are_kept_per_exchange_and_queue() -> None:
    clock = FakeClock()
    book = LeaseBook(clock=clock)
    book.declared(DelayQueue(1000))
    assert not book.needs_declare(DelayQueue(1000))
    assert book.needs_declare(DelayQueue(2000))
    assert book.needs_declare(DelayQueue(1000, delay_exchange="retries"))
    # the grace is not part of the key: the queue on the broker is the same
    assert not book.needs_declare(DelayQueue(1000, grace_ms=60_000))


def test_declared_at_a_given_time() -> None:
    clock = FakeClock()
    book = LeaseBook(clock=clock)
    queue = DelayQueue(10)
    assert book.now() == clock.now
    book.declared(queue, at=clock.now - 2.5)
    assert book.needs_declare(queue)
    book.declared(queue, at=clock.now - 2.4)
    assert not book.needs_declare(queue)


def test_forget_one_or_all() -> None:
    book = LeaseBook(clock=FakeClock())
    first, second = DelayQueue(10), DelayQueue(20)
    book.declared(first)
    book.declared(second)
    book.forget(first)
    assert book.needs_declare(first)
    assert not book.needs_declare(second)
    book.forget(first)  # forgetting an unknown queue is fine
    book.declared(first)
    book.forget()
    assert book.needs_declare(first)
    assert book.needs_declare(second)


def test_the_default_clock_is_monotonic() -> None:
    book = LeaseBook()
    queue = DelayQueue(10)
    before = time.monotonic()
    book.declared(queue)
    assert not book.needs_declare(queue)
    book.declared(queue, at=before - DEFAULT_GRACE_MS / 2000)
    assert book.needs_declare(queue)


def test_a_lease_covers_a_copy_confirmed_within_the_grace_period() -> None:
    now = [100.0]
    book = LeaseBook(clock=lambda: now[0])
    queue = DelayQueue(50, grace_ms=1000)
    assert not book.covers(queue)  # never declared: not covered
    book.declared(queue)
    now[0] += 0.999
    assert book.covers(queue)
    now[0] += 0.001  # a full grace period since the declare began
    assert not book.covers(queue)
    book.forget(queue)
    assert not book.covers(queue)
