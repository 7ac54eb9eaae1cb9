"""BackoffMiddleware on a real FastStream app (RabbitBroker + FastStream) and broker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from faststream import FastStream
from faststream.exceptions import NackMessage
from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitBroker, RabbitMessage, RabbitQueue

from aio_backoff import Backoff, BackoffConfigError, Retrier, parking_queue_name
from aio_backoff.faststream import BackoffMiddleware
from tests import brokers
from tests.aio.retrying import fast_backoff
from tests.waiting import wait_until, wait_until_true

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

Fast = fast_backoff((20,), limit=3)


@pytest.fixture
async def rabbit() -> AsyncIterator[RabbitBroker]:
    """A FastStream broker of the test broker, stopped after the test."""
    broker = RabbitBroker(brokers.current().amqp_url)
    yield broker
    await broker.stop()


@contextlib.asynccontextmanager
async def running(
    rabbit: RabbitBroker, middleware: BackoffMiddleware
) -> AsyncIterator[FastStream]:
    """A FastStream app of ``rabbit``, started and stopped around the block."""
    app = FastStream(
        rabbit, on_startup=[middleware.start], after_shutdown=[middleware.stop]
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def publish_until(
    rabbit: RabbitBroker,
    middleware: BackoffMiddleware,
    queue: str,
    done: Callable[[], bool],
    what: str,
    body: str = "x",
) -> None:
    """Publish ``body`` to ``queue`` on a running app; return once ``done()``."""
    async with running(rabbit, middleware):
        await rabbit.publish(body, queue)
        await wait_until(done, what=what)


async def get_all(connection: AbstractRobustConnection, queue: str) -> list[Any]:
    """The messages on ``queue`` (none while it does not exist), taken off it."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return []  # the broker closed the channel
    out = []
    while (message := await declared.get(no_ack=True, fail=False)) is not None:
        out.append(message)
    await channel.close()
    return out


async def test_a_backoff_comes_back_with_its_count(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    queue = declared.queue(unique_name("orders"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)
    seen: list[Any] = []

    @rabbit.subscriber(queue)
    async def handle(body: str, message: RabbitMessage) -> None:
        seen.append((body, message.headers.get("backoff-retries")))
        if len(seen) < 3:
            raise Backoff

    await publish_until(
        rabbit,
        middleware,
        queue,
        lambda: len(seen) == 3,
        what="three deliveries",
        body="hello",
    )

    assert seen == [("hello", None), ("hello", 1), ("hello", 2)]


async def test_retry_for_and_expiry_runs_the_final_action(
    declared: Any,
    unique_name: Callable[[str], str],
    connection: AbstractRobustConnection,
    rabbit: RabbitBroker,
) -> None:
    queue = declared.queue(unique_name("orders"))
    middleware = BackoffMiddleware(
        rabbit, backoff=fast_backoff((20,), limit=2), retry_for=[TimeoutError]
    )
    seen: list[Any] = []

    @rabbit.subscriber(queue)
    async def handle(message: RabbitMessage) -> None:
        seen.append(message.headers.get("backoff-retries"))
        raise TimeoutError

    async with running(rabbit, middleware):
        await rabbit.publish("x", queue)
        await wait_until(lambda: len(seen) == 3, what="three deliveries")
        parked: list[Any] = []

        async def collected() -> bool:
            parked.extend(await get_all(connection, parking_queue_name(queue)))
            return bool(parked)

        await wait_until_true(collected, what="the parked message")

    assert seen == [None, 1, 2]
    assert len(parked) == 1
    assert parked[0].body == b"x"
    assert "backoff-error" in parked[0].headers


async def test_interop_with_a_retrier_on_the_same_queue(
    declared: Any,
    unique_name: Callable[[str], str],
    channel: AbstractChannel,
    rabbit: RabbitBroker,
) -> None:
    """A copy placed by FastStream is counted on by a Retrier, and back again."""
    queue = declared.queue(unique_name("shared"))
    middleware = BackoffMiddleware(rabbit, backoff=fast_backoff((20,), limit=10))
    seen: list[Any] = []

    @rabbit.subscriber(queue)
    async def handle(message: RabbitMessage) -> None:
        seen.append(("faststream", message.headers.get("backoff-retries")))
        raise Backoff

    retrier = Retrier(channel, backoff=fast_backoff((20,), limit=10))

    async def plain(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        seen.append(("retrier", (message.headers or {}).get("backoff-retries")))
        raise Backoff

    async with running(rabbit, middleware):
        aio_queue = await channel.get_queue(queue)
        await retrier.consume(aio_queue, plain)
        await rabbit.publish("x", queue)
        await wait_until(
            lambda: {who for who, _ in seen} == {"faststream", "retrier"},
            what="both consumers",
        )
        await retrier.stop()

    counts = [count for _, count in seen]
    assert counts == [None, *range(1, len(counts))]  # one count across both


async def test_a_publish_before_backoff_is_kept_and_the_copy_is_the_original(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    queue = declared.queue(unique_name("in"))
    side = declared.queue(unique_name("side"))
    out = declared.queue(unique_name("out"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)
    seen: list[Any] = []
    side_effects: list[str] = []
    results: list[str] = []

    @rabbit.subscriber(queue)
    @rabbit.publisher(out)
    async def handle(body: str, message: RabbitMessage) -> str:
        seen.append((body, message.headers.get("backoff-retries")))
        await rabbit.publish(f"side effect {len(seen)}", side)
        if len(seen) < 2:
            raise Backoff
        return f"result of {body}"

    @rabbit.subscriber(side)
    async def on_side(body: str) -> None:
        side_effects.append(body)

    @rabbit.subscriber(out)
    async def on_result(body: str) -> None:
        results.append(body)

    async with running(rabbit, middleware):
        await rabbit.publish("original", queue)
        await wait_until(lambda: len(results) == 1, what="the handler's result")
        await wait_until(lambda: len(side_effects) == 2, what="both side effects")

    # the copy is the original message; the raise published no result
    assert seen == [("original", None), ("original", 1)]
    assert side_effects == ["side effect 1", "side effect 2"]
    assert results == ["result of original"]


async def test_ack_first_is_refused_at_startup(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    queue = declared.queue(unique_name("eager"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)

    @rabbit.subscriber(queue, ack_policy=AckPolicy.ACK_FIRST)
    async def handle(body: str) -> None:
        raise Backoff

    with pytest.raises(BackoffConfigError, match=r"ACK_FIRST.*lost"):
        await middleware.start()


async def test_other_errors_follow_the_ack_policy(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    """NACK_ON_ERROR: a ValueError is FastStream's to settle (requeued, no count)."""
    queue = declared.queue(unique_name("nack"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)
    seen: list[Any] = []

    @rabbit.subscriber(queue, ack_policy=AckPolicy.NACK_ON_ERROR)
    async def handle(message: RabbitMessage) -> None:
        seen.append(
            (message.headers.get("backoff-retries"), message.raw_message.redelivered)
        )
        if len(seen) < 2:
            raise ValueError("not ours to retry")

    await publish_until(
        rabbit, middleware, queue, lambda: len(seen) == 2, what="the requeued delivery"
    )

    assert seen == [(None, False), (None, True)]


async def test_manual_ack_policy_gets_its_original_acked_on_backoff(
    declared: Any,
    unique_name: Callable[[str], str],
    connection: AbstractRobustConnection,
    rabbit: RabbitBroker,
) -> None:
    """MANUAL: success is the handler's to ack; a Backoff's original is acked by the
    middleware once its copy is placed (else it would come back twice)."""
    queue = declared.queue(unique_name("manual"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)
    seen: list[Any] = []

    @rabbit.subscriber(queue, ack_policy=AckPolicy.MANUAL)
    async def handle(message: RabbitMessage) -> None:
        seen.append(message.headers.get("backoff-retries"))
        if len(seen) < 2:
            raise Backoff
        await message.ack()

    await publish_until(
        rabbit, middleware, queue, lambda: len(seen) == 2, what="the retry"
    )

    # after the app stopped, an unacked message would be back on the queue
    assert await get_all(connection, queue) == []
    assert seen == [None, 1]


async def test_without_start_the_first_message_starts_it(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    queue = declared.queue(unique_name("lazy"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast)
    seen: list[Any] = []

    @rabbit.subscriber(queue)
    async def handle(message: RabbitMessage) -> None:
        seen.append(message.headers.get("backoff-retries"))
        if len(seen) < 2:
            raise Backoff

    app = FastStream(rabbit)  # no hooks
    await app.start()
    try:
        assert not middleware.started
        await rabbit.publish("x", queue)
        await wait_until(lambda: len(seen) == 2, what="the retry")
        assert middleware.started
    finally:
        await app.stop()
        await middleware.stop()

    assert seen == [None, 1]


async def test_a_queue_the_ladder_cannot_return_to_is_refused_at_startup(
    unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    middleware = BackoffMiddleware(rabbit, backoff=Fast)

    @rabbit.subscriber(unique_name("orders") + ".#")
    async def handle(body: str) -> None:
        raise Backoff

    with pytest.raises(RuntimeError, match="not started"):
        middleware.retrier  # noqa: B018
    with pytest.raises(ValueError, match="#"):
        await middleware.start()
    assert not middleware.started


async def test_an_exclusive_queue_is_refused_with_the_ladder(
    unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    middleware = BackoffMiddleware(rabbit, backoff=Fast)

    @rabbit.subscriber(RabbitQueue(unique_name("mine"), exclusive=True))
    async def handle(body: str) -> None:
        raise Backoff

    with pytest.raises(ValueError, match=r"exclusive.*per-delay"):
        await middleware.start()


async def test_expiry_dead_letters_when_the_subscribers_queue_has_a_dlx(
    declared: Any,
    unique_name: Callable[[str], str],
    channel: AbstractChannel,
    connection: AbstractRobustConnection,
    rabbit: RabbitBroker,
) -> None:
    """The default final action sees the queue's x-dead-letter-exchange (given in
    the subscriber's RabbitQueue) and dead-letters instead of parking."""
    dlx = declared.exchange(unique_name("dlx"))
    dead = declared.queue(unique_name("dead"))
    exchange = await channel.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT)
    dead_queue = await channel.declare_queue(dead, durable=True)  # 4.3: no transient
    await dead_queue.bind(exchange)
    queue = declared.queue(unique_name("orders"))
    middleware = BackoffMiddleware(rabbit, backoff=fast_backoff((20,), limit=1))

    @rabbit.subscriber(
        RabbitQueue(queue, durable=True, arguments={"x-dead-letter-exchange": dlx})
    )
    async def handle(body: str) -> None:
        raise Backoff

    dead_letters: list[Any] = []

    async def dead_lettered() -> bool:
        dead_letters.extend(await get_all(connection, dead))
        return bool(dead_letters)

    async with running(rabbit, middleware):
        await rabbit.publish("x", queue)
        await wait_until_true(dead_lettered, what="the dead-lettered message")

    assert [m.body for m in dead_letters] == [b"x"]
    assert await get_all(connection, parking_queue_name(queue)) == []


async def test_faststreams_own_exceptions_are_never_retried(
    declared: Any, unique_name: Callable[[str], str], rabbit: RabbitBroker
) -> None:
    """NackMessage is FastStream's control flow, even under retry_for=[Exception]."""
    queue = declared.queue(unique_name("nack"))
    middleware = BackoffMiddleware(rabbit, backoff=Fast, retry_for=[Exception])
    seen: list[Any] = []

    @rabbit.subscriber(queue)
    async def handle(message: RabbitMessage) -> None:
        seen.append(
            (message.headers.get("backoff-retries"), message.raw_message.redelivered)
        )
        if len(seen) < 2:
            raise NackMessage

    await publish_until(
        rabbit, middleware, queue, lambda: len(seen) == 2, what="the requeued delivery"
    )

    assert seen == [(None, False), (None, True)]
