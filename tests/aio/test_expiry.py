"""Final actions on expiry, and what happens when a copy cannot be placed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import (
    RETRIES_HEADER,
    Backoff,
    CopyNotPlaced,
    ExpiredMessage,
    Retrier,
    dead_letter,
    drop,
    park,
)
from tests.aio.retrying import (
    FAST_FAILURES,
    Recorder,
    fast_backoff,
    get_one,
    handler_failing,
    publish,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(20)]

LIMIT_1 = fast_backoff(schedule=(10,), limit=1, name="Limit1")


async def expire(
    retrier: Retrier, message: AbstractIncomingMessage, queue: AbstractQueue | str
) -> Backoff.Expired:
    """Run ``message`` (already retried once) through process() and a Backoff."""
    with pytest.raises(Backoff.Expired) as caught:
        async with retrier.process(message, queue=queue):
            raise Backoff("still busy")
    return caught.value


async def spent(channel: AbstractChannel, queue: AbstractQueue) -> Any:
    """A message on ``queue`` that has used its one retry, as delivered."""
    await publish(channel, queue.name, b"spent", headers={RETRIES_HEADER: 1})
    return await get_one(queue)


@pytest.fixture
async def dlx_target(
    channel: AbstractChannel, declared: Any, unique_name: Any
) -> tuple[AbstractQueue, AbstractQueue]:
    """A queue that dead-letters (through the default exchange) to a second one."""
    dead = await channel.declare_queue(
        declared.queue(unique_name("dead")), durable=True
    )
    queue = await channel.declare_queue(
        declared.queue(unique_name("with-dlx")),
        durable=True,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead.name,
        },
    )
    return queue, dead


async def test_default_dead_letters_through_the_queues_dlx(
    channel: AbstractChannel,
    dlx_target: tuple[AbstractQueue, AbstractQueue],
    make_retrier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, dead = dlx_target
    retrier = make_retrier(backoff=LIMIT_1)
    message = await spent(channel, queue)

    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        error = await expire(retrier, message, queue)

    assert isinstance(error.__cause__, Backoff)
    assert error.__cause__.__cause__.args == ("still busy",)
    dead_lettered = await get_one(dead)
    await dead_lettered.ack()
    assert dead_lettered.body == b"spent"
    assert dead_lettered.headers["x-death"][0]["reason"] == "rejected"
    [line] = [r.getMessage() for r in caplog.records if r.name == "aio_backoff.expiry"]
    assert "dead-lettered" in line
    assert queue.name in line


async def test_default_parks_when_the_queue_has_no_dlx(
    channel: AbstractChannel,
    dlx_target: tuple[AbstractQueue, AbstractQueue],
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
) -> None:
    retrier = make_retrier(backoff=LIMIT_1)
    parking = declared.queue(f"{target.name}.parked")
    message = await spent(channel, target)

    error = await expire(retrier, message, target)

    parked = await get_one(await channel.get_queue(parking))
    await parked.ack()
    assert parked.body == b"spent"
    assert parked.headers["backoff-error"] == str(error)
    assert parked.headers["backoff-queue"] == target.name
    assert await target.get(fail=False) is None

    # given only a name, the consumer cannot see the DLX: it parks as well
    queue, _ = dlx_target
    declared.queue(f"{queue.name}.parked")
    message = await spent(channel, queue)
    await expire(retrier, message, queue.name)
    parked = await get_one(await channel.get_queue(f"{queue.name}.parked"))
    await parked.ack()


async def test_dead_letter_explicitly(
    channel: AbstractChannel,
    dlx_target: tuple[AbstractQueue, AbstractQueue],
    make_retrier: Any,
) -> None:
    queue, dead = dlx_target
    retrier = make_retrier(backoff=LIMIT_1, on_expired=dead_letter)
    message = await spent(channel, queue)

    await expire(retrier, message, queue.name)  # a DLX set by policy looks like this

    dead_lettered = await get_one(dead)
    await dead_lettered.ack()
    assert dead_lettered.body == b"spent"


async def test_drop(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, caplog: Any
) -> None:
    retrier = make_retrier(backoff=LIMIT_1, on_expired=drop)
    message = await spent(channel, target)

    with caplog.at_level(logging.WARNING, logger="aio_backoff"):
        await expire(retrier, message, target)

    assert message.processed
    assert await target.get(fail=False) is None
    assert any("dropped" in r.getMessage() for r in caplog.records)


async def test_callback_gets_the_expired_message_and_may_settle_it(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    seen: list[ExpiredMessage] = []

    async def keep(expired: ExpiredMessage) -> None:
        seen.append(expired)
        await expired.message.nack(requeue=False)

    retrier = make_retrier(backoff=LIMIT_1, on_expired=keep)
    message = await spent(channel, target)

    error = await expire(retrier, message, target)

    [expired] = seen
    assert expired.message is message
    assert expired.queue == target.name
    assert expired.queue_arguments is None
    assert expired.error is error
    assert expired.publisher is retrier.publisher
    assert not expired.has_dead_letter_exchange
    assert await target.get(fail=False) is None


async def test_callback_that_leaves_the_message_unsettled_gets_it_acked(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    async def note(expired: ExpiredMessage) -> None:
        return None

    retrier = make_retrier(backoff=LIMIT_1)
    message = await spent(channel, target)

    with pytest.raises(Backoff.Expired):
        async with retrier.process(message, queue=target, on_expired=note):
            raise Backoff

    assert message.processed
    assert await target.get(fail=False) is None


async def test_failing_callback_falls_back_to_the_default(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(expired: ExpiredMessage) -> None:
        raise RuntimeError("callback bug")

    retrier = make_retrier(backoff=LIMIT_1, on_expired=broken)
    parking = declared.queue(f"{target.name}.parked")
    message = await spent(channel, target)

    with caplog.at_level(logging.WARNING, logger="aio_backoff"):
        await expire(retrier, message, target)

    parked = await get_one(await channel.get_queue(parking))
    await parked.ack()
    assert parked.body == b"spent"
    messages = [r.getMessage() for r in caplog.records]
    assert any("calling on_expired" in text for text in messages)
    assert any("falling back to dead_letter_or_park" in text for text in messages)


async def test_callback_that_settled_and_then_failed_is_reraised(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    async def half(expired: ExpiredMessage) -> None:
        await expired.message.ack()
        raise RuntimeError("after the ack")

    retrier = make_retrier(backoff=LIMIT_1, on_expired=half)
    message = await spent(channel, target)

    with pytest.raises(RuntimeError, match="after the ack"):
        async with retrier.process(message, queue=target):
            raise Backoff

    assert await target.get(fail=False) is None


async def test_cancelled_callback_puts_the_message_back(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    async def slow(expired: ExpiredMessage) -> None:
        raise asyncio.CancelledError  # as if cancelled while it awaited

    retrier = make_retrier(backoff=LIMIT_1, on_expired=slow)
    message = await spent(channel, target)

    async def work() -> None:
        async with retrier.process(message, queue=target):
            raise Backoff

    with pytest.raises(asyncio.CancelledError):
        await work()

    back = await get_one(target)
    await back.ack()
    assert back.redelivered


REFUSING = {"x-max-length": 0, "x-overflow": "reject-publish"}
"""A queue that nacks every publish."""


async def test_failing_park_puts_the_message_back(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
) -> None:
    parking = declared.queue(f"{target.name}.parked")
    await channel.declare_queue(parking, durable=True, arguments=REFUSING)
    retrier = make_retrier(backoff=LIMIT_1, on_expired=park)
    message = await spent(channel, target)

    with pytest.raises(CopyNotPlaced, match=r"parked copy .* was nacked"):
        async with retrier.process(message, queue=target):
            raise Backoff

    back = await get_one(target)
    await back.ack()
    assert back.redelivered
    assert back.body == b"spent"


async def test_failing_callback_and_failing_fallback_put_the_message_back(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
) -> None:
    async def broken(expired: ExpiredMessage) -> None:
        raise RuntimeError("callback bug")

    parking = declared.queue(f"{target.name}.parked")
    await channel.declare_queue(parking, durable=True, arguments=REFUSING)
    retrier = make_retrier(backoff=LIMIT_1, on_expired=broken)
    message = await spent(channel, target)

    with pytest.raises(CopyNotPlaced):
        async with retrier.process(message, queue=target):
            raise Backoff

    back = await get_one(target)
    await back.ack()
    assert back.redelivered


# -- a copy that cannot be placed ----------------------------------------------------


@pytest.fixture
async def conflicting_exchange(
    channel: AbstractChannel, declared: Any, unique_name: Any
) -> str:
    """An exchange name the publisher cannot declare (it exists as ``direct``)."""
    name = declared.exchange(unique_name("conflict"))
    await channel.declare_exchange(name, "direct")
    return name


async def test_unplaceable_copy_is_parked_with_its_reason(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    conflicting_exchange: str,
    declared: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused copy is permanent: parked at once with the reason, one ERROR line."""
    parking = declared.queue(f"{target.name}.parked")
    retrier = make_retrier(delay_exchange=conflicting_exchange, topology="per-delay")
    await publish(channel, target.name, message_id="m-7")
    message = await get_one(target)

    with (
        caplog.at_level(logging.INFO, logger="aio_backoff"),
        pytest.raises(CopyNotPlaced) as caught,
    ):
        async with retrier.process(message, queue=target):
            raise Backoff

    assert caught.value.permanent
    assert await target.get(fail=False) is None
    parked = await get_one(await channel.declare_queue(parking, passive=True))
    await parked.ack()
    assert parked.message_id == "m-7"
    assert "PRECONDITION_FAILED" in parked.headers["backoff-error"]
    [line] = [r for r in caplog.records if r.name == "aio_backoff.consumer"]
    assert line.levelno == logging.ERROR
    text = line.getMessage()
    assert f"parked in {parking!r}" in text
    assert "retry #1" in text
    assert "PRECONDITION_FAILED" in text


async def test_unplaceable_copy_after_the_handler_acked(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    conflicting_exchange: str,
) -> None:
    retrier = make_retrier(delay_exchange=conflicting_exchange, topology="per-delay")
    await publish(channel, target.name)
    message = await get_one(target)

    async def work() -> None:
        async with retrier.process(message, queue=target):
            await message.ack()  # the handler's choice: it cannot be taken back
            raise Backoff

    with pytest.raises(CopyNotPlaced):
        await work()

    assert await target.get(fail=False) is None


async def test_unplaceable_copy_with_the_consume_wrapper(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    conflicting_exchange: str,
    declared: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parking = await channel.declare_queue(
        declared.queue(f"{target.name}.parked"), durable=True
    )
    retrier = make_retrier(delay_exchange=conflicting_exchange, topology="per-delay")
    recorder = Recorder()
    with caplog.at_level(logging.ERROR, logger="aio_backoff"):
        await retrier.consume(target, handler_failing(recorder, times=1))
        await publish(channel, target.name)
        parked = await get_one(parking)
        await parked.ack()
        await recorder.settle(0.2)

    assert len(recorder.calls) == 1  # never handled again
    ours = [r for r in caplog.records if r.name.startswith("aio_backoff")]
    assert len(ours) == 1  # logged once, with its reason
    assert "parked in" in ours[0].getMessage()


async def test_copies_do_not_need_the_consumers_connection(
    channel: AbstractChannel, target: AbstractQueue, broker: Any
) -> None:
    """The publisher publishes on a connection of its own (opened from the URL of
    the channel it was given), so it places copies even once that one is gone."""
    lost = await aio_pika.connect(broker.amqp_url)
    retrier = Retrier(
        await lost.channel(), backoff=LIMIT_1, failure_policy=FAST_FAILURES
    )
    await lost.close()
    await publish(channel, target.name)
    message = await get_one(target)

    try:
        async with retrier.process(message, queue=target):
            raise Backoff
    finally:
        await retrier.close()

    copy = await get_one(target)
    await copy.ack()
    assert copy.headers["backoff-retries"] == 1
