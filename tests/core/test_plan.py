"""``plan_retry``: from a raised Backoff and a message's headers to a delayed copy."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import (
    Backoff,
    DelayQueue,
    RetryPlan,
    backoff_class,
    plan_retry,
    retries_done,
)
from aio_backoff.core import _plan
from aio_backoff.core._protocol import parked_headers
from tests.core.strategies import PROPERTY

pytestmark = pytest.mark.core

Steady = backoff_class(schedule=(100, 200, 400), limit=3, random_sigma=0, name="Steady")


def test_first_retry_plan() -> None:
    plan = plan_retry(Steady(), {"trace-id": "t1"}, target_queue="orders", now_ms=5)
    assert plan == RetryPlan(
        delay_ms=100,
        retry_number=1,
        limit=3,
        routing_key="orders",
        delay_queue=DelayQueue(100),
        headers={
            "trace-id": "t1",
            "backoff": 100,
            "backoff-retries": 1,
            "backoff-protocol": 1,
            "backoff-due": 105,
        },
        cause="Steady",
    )
    assert plan.expiration_ms == "100"
    assert plan.delay_queue.name == "backoff--100ms"


def test_a_message_without_headers() -> None:
    plan = plan_retry(Steady(), None, target_queue="orders", now_ms=0)
    assert plan.retry_number == 1
    assert plan.headers == {
        "backoff": 100,
        "backoff-retries": 1,
        "backoff-protocol": 1,
        "backoff-due": 100,
    }


def test_the_plan_continues_from_our_header() -> None:
    backoff = Steady()
    plan = plan_retry(backoff, {"backoff-retries": 2}, target_queue="orders")
    assert (plan.delay_ms, plan.retry_number) == (400, 3)
    assert plan.headers["backoff-retries"] == 3
    assert str(backoff) == "Backoff(retry #3 in 400ms)"


def test_the_plan_continues_from_a_legacy_x_death() -> None:
    headers = {
        "x-death": [
            {
                "exchange": "backoff",
                "queue": "backoff--100ms",
                "reason": "expired",
                "count": 1,
            },
            {
                "exchange": "backoff",
                "queue": "backoff--200ms",
                "reason": "expired",
                "count": 1,
            },
        ]
    }
    plan = plan_retry(Steady(), headers, target_queue="orders")
    assert (plan.delay_ms, plan.retry_number) == (400, 3)
    assert plan.headers["x-death"] == headers["x-death"]
    assert plan.headers["backoff-retries"] == 3


def test_another_exchange_and_grace() -> None:
    headers = {"x-death": [{"exchange": "retries", "count": 1}]}
    plan = plan_retry(
        Steady(),
        headers,
        target_queue="orders",
        delay_exchange="retries",
        grace_ms=9000,
    )
    assert plan.delay_ms == 200
    assert plan.delay_queue == DelayQueue(200, delay_exchange="retries", grace_ms=9000)
    assert plan.delay_queue.arguments["x-expires"] == 9200


def test_an_unlimited_backoff_plans_without_a_limit() -> None:
    forever = backoff_class(limit=0, random_sigma=0, schedule=(50,))
    plan = plan_retry(forever(), {"backoff-retries": 10**9}, target_queue="q")
    assert plan.limit is None
    assert plan.retry_number == 10**9 + 1


def test_a_per_raise_delay_is_planned() -> None:
    plan = plan_retry(Steady(delay_ms=30_000), None, target_queue="orders")
    assert plan.delay_ms == 30_000
    assert plan.expiration_ms == "30000"
    assert plan.delay_queue.name == "backoff--30000ms"


def test_expired_is_raised_chained_from_the_backoff() -> None:
    original = RuntimeError("still locked")
    backoff = Steady()
    backoff.__cause__ = original
    with pytest.raises(Backoff.Expired) as caught:
        plan_retry(backoff, {"backoff-retries": 3}, target_queue="orders")
    assert str(caught.value) == "Backoff aborted after '3' retries (~1 seconds)"
    assert caught.value.__cause__ is backoff
    assert backoff.__cause__ is original


@pytest.mark.parametrize("target", ["", None, 5, b"orders"])
def test_the_target_queue_is_required(target: Any) -> None:
    with pytest.raises(ValueError, match="needs the name of the queue") as caught:
        plan_retry(Steady(), None, target_queue=target)
    assert repr(target) in str(caught.value)


def test_the_plan_is_frozen() -> None:
    plan = plan_retry(Steady(), None, target_queue="orders")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.delay_ms = 1  # type: ignore[misc]


def test_three_retries_then_expired() -> None:
    headers: dict[str, Any] | None = {"trace-id": "t1"}
    delays = []
    for expected_number in (1, 2, 3):
        plan = plan_retry(Steady(), headers, target_queue="orders", now_ms=0)
        assert plan.retry_number == expected_number
        delays.append(plan.delay_ms)
        headers = plan.headers
    assert delays == [100, 200, 400]
    assert headers == {
        "trace-id": "t1",
        "backoff": 400,
        "backoff-retries": 3,
        "backoff-protocol": 1,
        "backoff-due": 400,
    }
    with pytest.raises(Backoff.Expired):
        plan_retry(Steady(), headers, target_queue="orders")


@PROPERTY
@given(
    limit=st.integers(min_value=1, max_value=30),
    items=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=5),
)
def test_a_walk_gets_exactly_limit_retries(limit: int, items: list[int]) -> None:
    cls = backoff_class(schedule=tuple(items), limit=limit, random_sigma=0)
    headers: dict[str, Any] | None = None
    for planned in range(1, limit + 1):
        plan = plan_retry(cls(), headers, target_queue="q")
        assert plan.retry_number == planned == retries_done(plan.headers)
        assert plan.delay_ms == items[min(planned - 1, len(items) - 1)]
        assert plan.delay_queue.delay_ms == plan.delay_ms
        assert plan.expiration_ms == str(plan.delay_ms)
        headers = plan.headers
    with pytest.raises(Backoff.Expired) as caught:
        plan_retry(cls(), headers, target_queue="q")
    assert caught.value.retries == limit


def _dead_lettered(headers: dict[str, Any], queue: str, delay: int) -> dict[str, Any]:
    """``headers`` as RabbitMQ 3.x delivers a copy that expired in ``queue``."""
    entry = {
        "queue": queue,
        "exchange": "backoff",
        "reason": "expired",
        "count": 1,
        "routing-keys": ["orders"],
        "original-expiration": str(delay),
    }
    return {**headers, "x-death": [entry, *headers.get("x-death", [])]}


def test_the_worked_example_of_docs_protocol_md() -> None:
    """The example at the end of docs/protocol.md, step by step."""
    example = backoff_class(schedule=(1000, 2000, 3000), limit=3, random_sigma=0)
    headers: dict[str, Any] = {"trace-id": "t-7"}
    for number, delay in enumerate((1000, 2000, 3000), start=1):
        assert retries_done(headers) == number - 1
        plan = plan_retry(example(), headers, target_queue="orders", now_ms=0)
        assert (plan.retry_number, plan.delay_ms) == (number, delay)
        assert plan.routing_key == "orders"
        assert plan.delay_queue.delay_exchange == "backoff"
        assert plan.expiration_ms == str(delay)
        assert plan.headers == {
            **headers,
            "backoff": delay,
            "backoff-retries": number,
            "backoff-protocol": 1,
            "backoff-due": delay,
        }
        headers = _dead_lettered(plan.headers, plan.delay_queue.name, delay)
    assert len(headers["x-death"]) == 3
    assert retries_done(headers) == 3
    # on RabbitMQ 4.x only the last dead-lettering is in x-death: same count
    assert retries_done({**headers, "x-death": headers["x-death"][:1]}) == 3
    with pytest.raises(Backoff.Expired) as caught:
        plan_retry(example(), headers, target_queue="orders")
    assert str(caught.value) == "Backoff aborted after '3' retries (~6 seconds)"
    parked = parked_headers(headers, error=str(caught.value), queue="orders")
    assert parked == {
        **headers,
        "backoff-error": "Backoff aborted after '3' retries (~6 seconds)",
        "backoff-queue": "orders",
    }


def test_plans_for_one_delay_share_one_checked_delay_queue() -> None:
    first = plan_retry(
        Steady(), {}, target_queue="orders", delay_exchange="ex", grace_ms=900
    )
    again = plan_retry(
        Steady(), {}, target_queue="other", delay_exchange="ex", grace_ms=900
    )
    other = plan_retry(
        Steady(), {}, target_queue="orders", delay_exchange="ex", grace_ms=901
    )
    assert first.delay_queue is again.delay_queue
    assert other.delay_queue == DelayQueue(
        delay_ms=100, delay_exchange="ex", grace_ms=901
    )
    assert other.delay_queue is not first.delay_queue


def test_a_delay_that_is_not_an_int_is_still_refused() -> None:
    """``True == 1``: a cached queue for 1 ms must not stand in for ``True``."""

    class BoolDelay(Backoff):
        def compute_next(self, retries: int) -> int:
            return True

    one_ms_backoff = backoff_class(schedule=(1,), random_sigma=0)()
    one_ms = plan_retry(one_ms_backoff, {}, target_queue="q")
    assert one_ms.delay_queue.delay_ms == 1
    for _ in range(2):
        with pytest.raises(TypeError, match="whole number of ms, got True"):
            plan_retry(BoolDelay(), {}, target_queue="q")


def test_a_bad_grace_period_is_refused_on_every_plan() -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="grace period must be a whole number"):
            plan_retry(Steady(), {}, target_queue="q", grace_ms=0)


def test_checked_delay_queues_are_kept_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_plan, "_DELAY_QUEUES", {})
    monkeypatch.setattr(_plan, "_DELAY_QUEUES_MAX", 2)
    for delay in (10, 20, 30, 40, 50):
        backoff = backoff_class(schedule=(delay,), random_sigma=0)()
        plan = plan_retry(backoff, {}, target_queue="q")
        assert plan.delay_queue == DelayQueue(delay_ms=delay)
        assert len(_plan._DELAY_QUEUES) <= 2
    assert list(_plan._DELAY_QUEUES.values())[-1] is plan.delay_queue
