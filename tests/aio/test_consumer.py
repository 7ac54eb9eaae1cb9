"""The asyncio consumer (Retrier) on a real broker: retries, limits, policies."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import (
    RETRIES_HEADER,
    Backoff,
    DelayedPublisher,
    Ladder,
    Retrier,
    RetryPlan,
    RetryPolicy,
    drop,
    exponential,
)
from tests.aio.retrying import (
    Recorder,
    fast_backoff,
    get_one,
    handler_failing,
    logged_errors,
    publish,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(20)]


async def test_backs_off_n_times_then_succeeds(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(20, 40, 60), limit=5))
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=3))
    await publish(channel, target.name)

    await recorder.wait(4)
    await recorder.settle()

    assert len(recorder.calls) == 4
    assert [call.retries for call in recorder.calls] == [None, 1, 2, 3]
    gaps = [b.at - a.at for a, b in itertools.pairwise(recorder.calls)]
    for gap, delay in zip(gaps, (0.020, 0.040, 0.060), strict=True):
        assert gap >= delay * 0.9
    declared = await channel.declare_queue(target.name, passive=True)
    assert declared.declaration_result.message_count == 0


async def test_expires_at_exactly_the_limit(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(10,), limit=3))
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=100), on_expired=drop)
    await publish(channel, target.name)

    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        await recorder.wait(4)
        await recorder.settle()

    assert len(recorder.calls) == 4  # the first delivery and 3 retries
    expired = logged_errors(caplog)
    assert len(expired) == 1
    assert "expired" in expired[0].getMessage()
    assert expired[0].exc_info is not None
    error = expired[0].exc_info[1]
    assert isinstance(error, Backoff.Expired)
    assert str(error) == "Backoff aborted after '3' retries (~0 seconds)"
    assert isinstance(error.__cause__, Backoff)
    assert error.retries == 3


@pytest.mark.parametrize(
    ("limit", "times"),
    [pytest.param(None, 30, id="none"), pytest.param(0, 25, id="zero")],
)
async def test_no_limit_keeps_going(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    limit: int | None,
    times: int,
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(1,), limit=limit))
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=times))
    await publish(channel, target.name)

    await recorder.wait(times + 1)
    await recorder.settle(0.2)

    assert len(recorder.calls) == times + 1
    assert recorder.calls[-1].retries == times


class GrowingBackoff(Backoff):
    """A dynamic schedule: 15 ms more after each retry."""

    limit = 4
    random_sigma = 0

    @classmethod
    def get_next_schedule_item(cls, index: int) -> float:
        return 15 * (index + 1)


async def test_dynamic_schedule_override(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retrier = make_retrier(backoff=GrowingBackoff)
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=3))
    await publish(channel, target.name)

    with caplog.at_level(logging.INFO, logger="aio_backoff.consumer"):
        await recorder.wait(4)

    delays = [
        record.args[-1]
        for record in caplog.records
        if record.name == "aio_backoff.consumer" and "retry #" in record.msg
    ]
    assert delays == [15, 30, 45]
    copies = [call.message.headers["backoff"] for call in recorder.calls[1:]]
    assert copies == [15, 30, 45]


async def test_schedule_helper(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    policy = fast_backoff(schedule=exponential(10, factor=2, cap_ms=30), limit=5)
    retrier = make_retrier(backoff=policy)
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=4))
    await publish(channel, target.name)

    await recorder.wait(5)
    assert [call.message.headers["backoff"] for call in recorder.calls[1:]] == [
        10,
        20,
        30,
        30,
    ]


async def test_per_raise_delay_override(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(5000,), limit=3))
    recorder = Recorder()
    # an upstream said "Retry-After: 30 ms": the 5 s schedule does not apply
    await retrier.consume(
        target,
        handler_failing(recorder, times=2, error=lambda _: Backoff(delay_ms=30)),
    )
    await publish(channel, target.name)

    await recorder.wait(3, seconds=3)
    assert [call.message.headers["backoff"] for call in recorder.calls[1:]] == [30, 30]


async def test_shorter_delays_overtake_longer_ones(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(1,), limit=3))
    order: list[bytes] = []
    done = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        if message.headers.get(RETRIES_HEADER) is None:
            delay = int(message.body.decode())
            raise Backoff(delay_ms=delay)
        order.append(message.body)
        if len(order) == 3:
            done.set()

    await retrier.consume(target, handle)
    for delay in (300, 200, 20):
        await publish(channel, target.name, str(delay).encode())

    async with asyncio.timeout(5):
        await done.wait()
    assert order == [b"20", b"200", b"300"]


async def test_two_consumers_on_different_queues(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, declared: Any
) -> None:
    other = await channel.declare_queue(
        declared.queue(f"{target.name}.other"), durable=True
    )
    retrier = make_retrier(backoff=fast_backoff(schedule=(20,), limit=3))
    first, second = Recorder(), Recorder()
    await retrier.consume(target, handler_failing(first, times=2))
    await retrier.consume(
        other, handler_failing(second, times=1), backoff=fast_backoff((10,), 1)
    )
    await publish(channel, target.name, b"one")
    await publish(channel, other.name, b"two")

    await first.wait(3)
    await second.wait(2)
    await first.settle(0.2)

    assert [call.message.body for call in first.calls] == [b"one"] * 3
    assert [call.message.body for call in second.calls] == [b"two"] * 2
    # the originals came straight; the copies through the ladder, whose routing
    # key ends with the queue it delivers to
    assert first.calls[0].message.routing_key == target.name
    assert second.calls[0].message.routing_key == other.name
    copies = [call.message.routing_key or "" for call in first.calls[1:]]
    assert {Ladder.parse_routing_key(key)[1] for key in copies} == {target.name}
    key = second.calls[1].message.routing_key or ""
    assert Ladder.parse_routing_key(key) == (10, other.name)


async def test_retry_for_turns_errors_into_the_policy(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(
        backoff=fast_backoff(schedule=(10,), limit=2), retry_for=(TimeoutError,)
    )
    recorder = Recorder()
    failed: list[BaseException] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        recorder.record(message)
        async with retrier.process(message, queue=target, on_expired=drop):
            raise TimeoutError("upstream is slow")

    async def consume(message: AbstractIncomingMessage) -> None:
        try:
            await handle(message)
        except Backoff.Expired as error:
            failed.append(error)

    await target.consume(consume)
    await publish(channel, target.name)

    await recorder.wait(3)
    await recorder.settle(0.2)
    assert len(recorder.calls) == 3
    [error] = failed
    assert isinstance(error, Backoff.Expired)
    assert isinstance(error.__cause__, Backoff)
    assert isinstance(error.__cause__.__cause__, TimeoutError)


class OwnPolicy(Backoff):
    schedule: ClassVar = (25,)
    limit = 1
    random_sigma = 0


@pytest.mark.parametrize(
    ("raised", "consumer_backoff", "delay"),
    [
        # per-consumer override: a plain Backoff() gets this consumer's 10 ms, limit 1
        pytest.param(
            lambda: Backoff("busy"),
            fast_backoff(schedule=(10,), limit=1),
            10,
            id="plain-takes-the-consumers",
        ),
        pytest.param(OwnPolicy, None, 25, id="subclass-keeps-its-own"),
    ],
)
async def test_which_policy_a_raised_backoff_follows(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    raised: Callable[[], Backoff],
    consumer_backoff: type[Backoff] | None,
    delay: int,
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(5000,), limit=9))
    recorder = Recorder()
    await retrier.consume(
        target,
        handler_failing(recorder, times=100, error=lambda _: raised()),
        backoff=consumer_backoff,
        on_expired=drop,
    )
    await publish(channel, target.name)

    await recorder.wait(2, seconds=3)
    await recorder.settle(0.2)
    assert len(recorder.calls) == 2
    assert recorder.calls[1].message.headers["backoff"] == delay


class StrippingPublisher(DelayedPublisher):
    """Drops the client's x-death before republishing, as RabbitMQ 4.x does."""

    def copy_headers(self, message: Any, plan: RetryPlan, extra: Any) -> Any:
        headers = super().copy_headers(message, plan, extra)
        headers.pop("x-death", None)
        return headers


async def test_count_survives_when_x_death_is_dropped(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(
        backoff=fast_backoff(schedule=(10,), limit=3),
        publisher=StrippingPublisher(channel, topology="per-delay"),
        on_expired=drop,
    )
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=100))
    await publish(channel, target.name)

    await recorder.wait(4)
    await recorder.settle()

    assert len(recorder.calls) == 4
    assert [call.retries for call in recorder.calls] == [None, 1, 2, 3]
    # what the broker wrote on the last dead-lettering: one death only
    deaths = recorder.calls[-1].message.headers["x-death"]
    assert sum(death["count"] for death in deaths) == 1


async def test_carries_on_from_a_legacy_x_death_only_message(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(10,), limit=4))
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=100), on_expired=drop)
    # what nameko-amqp-retry 0.7.1 leaves after two retries, and no header of ours
    legacy = {
        "x-death": [
            {
                "count": 2,
                "exchange": "backoff",
                "queue": "backoff--10ms",
                "reason": "expired",
                "routing-keys": [target.name],
                "time": datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0),
                "original-expiration": "10",
            }
        ]
    }
    await publish(channel, target.name, headers=legacy)

    await recorder.wait(3)
    await recorder.settle()

    assert len(recorder.calls) == 3  # retries 3 and 4 were left
    assert [call.retries for call in recorder.calls] == [None, 3, 4]


async def test_other_errors_reject_without_requeue(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, caplog: Any
) -> None:
    retrier = make_retrier()
    recorder = Recorder()
    await retrier.consume(
        target, handler_failing(recorder, times=1, error=lambda _: ValueError("bad"))
    )
    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        await publish(channel, target.name)
        await recorder.wait(1)
        await recorder.settle()

    assert len(recorder.calls) == 1
    declared = await channel.declare_queue(target.name, passive=True)
    assert declared.declaration_result.message_count == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("rejected after ValueError: bad" in text for text in messages)
    errors = logged_errors(caplog)
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


async def test_other_errors_can_requeue(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(requeue_on_error=True)
    recorder = Recorder()
    await retrier.consume(
        target, handler_failing(recorder, times=1, error=lambda _: ValueError("bad"))
    )
    await publish(channel, target.name)

    await recorder.wait(2)
    assert recorder.calls[1].message.redelivered
    assert recorder.calls[1].retries is None


async def test_process_reraises_other_errors_like_message_process(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    await publish(channel, target.name)
    message = await get_one(target)

    with pytest.raises(KeyError):
        async with retrier.process(message, queue=target.name):
            raise KeyError("missing")

    assert message.processed
    assert await target.get(fail=False) is None


async def test_process_acks_on_success_and_skips_settled_messages(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    await publish(channel, target.name, b"one")
    await publish(channel, target.name, b"two")
    one = await get_one(target)
    two = await get_one(target)

    async with retrier.process(one, queue=target) as message:
        assert message is one
    async with retrier.process(two, queue=target):
        await two.ack()  # settled by the handler: not settled again
    with pytest.raises(ValueError, match="bad"):
        async with retrier.process(two, queue=target):
            raise ValueError("bad")

    assert one.processed
    assert await target.get(fail=False) is None


async def test_backoff_after_the_handler_acked_still_publishes_the_copy(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(10,), limit=2))
    await publish(channel, target.name)
    message = await get_one(target)

    async with retrier.process(message, queue=target):
        await message.ack()
        raise Backoff

    copy = await get_one(target)
    assert copy.headers[RETRIES_HEADER] == 1
    await copy.ack()


async def test_cancelled_error_propagates_and_requeues(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, caplog: Any
) -> None:
    retrier = make_retrier()
    await publish(channel, target.name)
    message = await get_one(target)
    entered = asyncio.Event()

    async def work() -> None:
        async with retrier.process(message, queue=target):
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(work())
    await entered.wait()
    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    again = await get_one(target)
    assert again.redelivered
    assert again.body == b"payload"
    await again.ack()
    assert any("interrupted" in r.getMessage() for r in caplog.records)


async def test_cancelled_after_settling_is_left_alone(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    await publish(channel, target.name)
    message = await get_one(target)

    async def work() -> None:
        async with retrier.process(message, queue=target):
            await message.ack()
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await work()

    assert await target.get(fail=False) is None


async def test_requeue_failure_is_logged(
    connection: Any, target: AbstractQueue, make_retrier: Any, caplog: Any
) -> None:
    consuming = await connection.channel()
    queue = await consuming.get_queue(target.name)
    await publish(consuming, target.name)
    message = await get_one(queue)
    retrier = make_retrier()

    async def work() -> None:
        async with retrier.process(message, queue=target):
            await consuming.close()  # the delivery channel is gone
            raise asyncio.CancelledError

    with (
        caplog.at_level(logging.INFO, logger="aio_backoff"),
        pytest.raises(asyncio.CancelledError),
    ):
        await work()

    assert any("could not requeue" in r.getMessage() for r in caplog.records)
    back = await get_one(target)  # the broker requeued it with the channel
    assert back.redelivered
    await back.ack()


async def test_retry_log_line(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    retrier = make_retrier(backoff=fast_backoff(schedule=(20,), limit=3))
    await publish(channel, target.name, message_id="m-1")
    message = await get_one(target)

    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        async with retrier.process(message, queue=target):
            raise Backoff

    [line] = [r for r in caplog.records if r.name == "aio_backoff.consumer"]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f"message 'm-1' from queue {target.name!r}: retry #1 (limit 3) in 20 ms"
    )
    copy = await get_one(target)
    await copy.ack()


async def test_consume_refuses_no_ack(target: AbstractQueue, make_retrier: Any) -> None:
    retrier = make_retrier()
    with pytest.raises(ValueError, match="no_ack=True"):
        await retrier.consume(target, handler_failing(Recorder(), 0), no_ack=True)


def test_policy_checks_its_settings() -> None:
    with pytest.raises(TypeError, match="backoff must be Backoff"):
        RetryPolicy(backoff=ValueError)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_for must hold exception classes"):
        RetryPolicy(retry_for=("TimeoutError",))  # type: ignore[arg-type]
    policy = RetryPolicy(retry_for=[KeyError])  # type: ignore[arg-type]
    assert policy.retry_for == (KeyError,)
    assert policy.override(retry_for=()).retry_for == ()
    assert policy.override().retry_for == (KeyError,)


def test_queue_name_is_required(channel: AbstractChannel) -> None:
    retrier = Retrier(channel)
    with pytest.raises(ValueError, match="needs the name of the queue"):
        retrier.wrap(handler_failing(Recorder(), 0), queue="")
