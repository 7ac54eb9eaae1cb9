"""Hooks on the asyncio stack: what each event says, against a real broker."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import RETRIES_HEADER, Hooks, Retrier, delay_queue
from aio_backoff.events import CameBack, Expired, NotPlaced, Parked, Scheduled
from tests.aio.retrying import Recorder, get_one, publish
from tests.observability.recording import Events, failing
from tests.observability.scenario import RETRIED_TWICE_THEN_PARKED, TWICE
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def consume(
    retrier: Retrier,
    queue: AbstractQueue,
    times: int,
    error: Callable[[], Exception] | None = None,
    **kwargs: Any,
) -> Recorder:
    """Consume with a handler that fails on its first ``times`` runs."""
    recorder = Recorder()

    async def handle(message: AbstractIncomingMessage) -> None:
        if recorder.record(message) < times:
            raise error() if error else retrier.policy.backoff(**kwargs)

    await retrier.consume(queue, handle)
    return recorder


async def one_message_told(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    times: int,
    body: bytes = b"payload",
) -> tuple[Events, Recorder]:
    """One message published to ``target``, consumed by a Retrier backing off
    ``TWICE`` (failing on its first ``times`` runs) whose hooks tell ``Events``."""
    events = Events()
    retrier = make_retrier(backoff=TWICE, hooks=events.hooks())
    recorder = await consume(retrier, target, times=times)
    await publish(channel, target.name, body)
    return events, recorder


async def test_a_retry_is_scheduled_and_comes_back_late_by_a_little(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    events, recorder = await one_message_told(
        channel, target, make_retrier, times=1, body=b"one"
    )
    await recorder.wait(2)
    await wait_until(lambda: events.of(CameBack), what="the came-back event")
    [scheduled] = events.of(Scheduled)
    assert scheduled.queue == target.name
    assert (scheduled.attempt, scheduled.limit, scheduled.delay_ms) == (1, 2, 30)
    assert scheduled.exception_type == "Twice"
    assert scheduled.message_id == recorder.calls[0].message.message_id
    [back] = events.of(CameBack)
    assert (back.queue, back.attempt, back.delay_ms) == (target.name, 1, 30)
    assert back.message_id == scheduled.message_id
    assert back.lateness_ms is not None
    assert 0 <= back.lateness_ms < 5000
    assert not events.of(Expired)
    assert not events.of(NotPlaced)


async def test_the_exception_type_is_the_retried_exception(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    events = Events()
    retrier = make_retrier(
        backoff=TWICE, retry_for=[ConnectionResetError], hooks=events.hooks()
    )
    recorder = await consume(retrier, target, times=1, error=ConnectionResetError)
    await publish(channel, target.name)
    await recorder.wait(2)
    await wait_until(lambda: events.of(Scheduled), what="the scheduled event")
    assert events.of(Scheduled)[0].exception_type == "ConnectionResetError"


async def test_an_expired_message_is_parked(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
) -> None:
    declared.queue(f"{target.name}.parked")
    events, recorder = await one_message_told(channel, target, make_retrier, times=10)
    await wait_until(lambda: events.of(Parked), what="the parked event")
    assert len(recorder.calls) == 3
    assert [event.attempt for event in events.of(Scheduled)] == [1, 2]
    assert [event.attempt for event in events.of(CameBack)] == [1, 2]
    [expired] = events.of(Expired)
    assert (expired.queue, expired.attempt, expired.limit) == (target.name, 2, 2)
    assert expired.exception_type == "Twice"
    [parked] = events.of(Parked)
    assert parked.queue == target.name
    assert parked.parking_queue == f"{target.name}.parked"
    assert "2 retries" in parked.reason or "retries" in parked.reason
    kinds = [type(event).__name__ for event in events.seen]
    assert kinds == RETRIED_TWICE_THEN_PARKED


async def test_a_copy_the_broker_refuses_is_not_placed_and_parked(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    declared.queue(f"{target.name}.parked")
    delay_exchange = declared.exchange(unique_name("delay"))
    delay = random.randrange(3_000_000, 4_000_000)
    other = delay_queue(delay, delay_exchange=delay_exchange, grace_ms=7777)
    declared.queue(other.name)
    await channel.declare_queue(other.name, durable=True, arguments=other.arguments)
    events = Events()
    retrier = make_retrier(
        delay_exchange=delay_exchange, topology="per-delay", hooks=events.hooks()
    )
    await consume(retrier, target, times=10, delay_ms=delay)
    await publish(channel, target.name)
    await wait_until(lambda: events.of(Parked), what="the parked event")
    [failed] = events.of(NotPlaced)
    assert failed.queue == target.name
    assert failed.permanent is True
    assert (failed.attempt, failed.delay_ms) == (1, delay)
    assert "PRECONDITION_FAILED" in failed.reason
    assert not events.of(Scheduled)


async def test_failing_hooks_do_not_change_the_fate_of_a_message(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parking = await channel.declare_queue(
        declared.queue(f"{target.name}.parked"), durable=True
    )
    events = Events()
    hooks = Hooks(every=failing) + events.hooks()
    retrier = make_retrier(backoff=TWICE, hooks=hooks)
    recorder = await consume(retrier, target, times=10)
    with caplog.at_level(logging.ERROR, logger="aio_backoff.hooks"):
        await publish(channel, target.name, b"doomed")
        parked = await get_one(parking)
        await wait_until(lambda: events.of(Parked), what="the parked event")
    await parked.ack()
    assert parked.body == b"doomed"
    assert len(recorder.calls) == 3  # retried twice, as without hooks
    failures = [r for r in caplog.records if r.name == "aio_backoff.hooks"]
    assert len(failures) == len(events.seen) == 6
    assert all(record.exc_info for record in failures)


async def test_no_hooks_no_events_and_a_plain_delivery_is_no_came_back(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    events, recorder = await one_message_told(channel, target, make_retrier, times=0)
    await recorder.wait(1)
    await recorder.settle(0.1)
    assert events.seen == []


async def test_the_retry_log_line_has_structured_fields(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retrier = make_retrier(backoff=TWICE)
    recorder = await consume(retrier, target, times=1)
    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        await publish(channel, target.name)
        await recorder.wait(2)
    [line] = [r for r in caplog.records if "retry #1" in r.getMessage()]
    assert line.backoff_queue == target.name  # type: ignore[attr-defined]
    assert line.backoff_attempt == 1  # type: ignore[attr-defined]
    assert line.backoff_limit == 2  # type: ignore[attr-defined]
    assert line.backoff_delay_ms == 30  # type: ignore[attr-defined]
    assert line.backoff_message_id == recorder.calls[0].message.message_id  # type: ignore[attr-defined]
    assert recorder.calls[1].message.headers[RETRIES_HEADER] == 1


def test_hooks_take_only_callables() -> None:
    with pytest.raises(TypeError, match="takes callables"):
        Hooks(scheduled=[1])  # type: ignore[list-item]
    assert not Hooks()
    assert Hooks(expired=print)
    both = Hooks(expired=print) + Hooks(expired=repr, parked=print)
    assert (len(both.expired), len(both.parked), len(both.scheduled)) == (2, 1, 0)
