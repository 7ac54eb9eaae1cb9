"""DelayedPublisher on a real broker: copies, leases, returns, nacks, declare errors.

Tests that delete a delay queue use delays no other test uses, so that they cannot
delete a copy in flight for another test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import (
    DELAY_HEADER,
    PROTOCOL_VERSION,
    RETRIES_HEADER,
    Backoff,
    CopyNotPlaced,
    DelayedPublisher,
    LeaseBook,
    delay_queue,
)
from aio_backoff.core._protocol import KEPT_PROPERTIES, PROTOCOL_HEADER
from tests.aio.retrying import fast_backoff, get_one, publish

pytestmark = [pytest.mark.broker, pytest.mark.timeout(20)]

TEN_MS = fast_backoff(schedule=(10,))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def publisher(channel: AbstractChannel) -> Any:
    made = DelayedPublisher(channel, topology="per-delay")
    yield made
    await made.close()


def retried_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aio_backoff.republish" and r.levelno == logging.WARNING
    ]


async def test_copy_keeps_body_and_properties_bit_for_bit(
    channel: AbstractChannel, target: AbstractQueue, publisher: DelayedPublisher
) -> None:
    body = bytes(range(256)) * 3
    headers = {
        "text": "ünïcode",
        "number": 2**40,
        "small": 7,
        "negative": -3,
        "flag": True,
        "ratio": 0.25,
        "nested": {"list": [1, "two", {"three": 3}]},
        "empty": None,
    }
    stamp = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    await publish(
        channel,
        target.name,
        body,
        headers=headers,
        content_type="application/x-custom",
        content_encoding="gzip",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=7,
        correlation_id="corr-1",
        reply_to="some.reply.queue",
        message_id="msg-1",
        timestamp=stamp,
        type="order.created",
        app_id="tests",
        user_id="guest",
        expiration=60,
    )
    original = await get_one(target)
    plan = await publisher.retry(original, TEN_MS(), target_queue=target.name)
    await original.ack()
    copy = await get_one(target)
    await copy.ack()

    assert copy.body == original.body == body
    for name in KEPT_PROPERTIES:  # the list itself is pinned in tests/core
        assert getattr(copy, name) == getattr(original, name), name
    assert copy.timestamp == stamp
    assert copy.priority == 7
    assert copy.user_id is None  # dropped: the broker checks it per connection
    assert copy.expiration is None  # the old 60 s expiration did not travel
    sent = {key: copy.headers[key] for key in headers}
    assert sent == original.headers == headers
    assert copy.headers[DELAY_HEADER] == plan.delay_ms == 10
    assert copy.headers[RETRIES_HEADER] == 1
    assert copy.headers[PROTOCOL_HEADER] == PROTOCOL_VERSION
    assert copy.routing_key == target.name


async def test_extra_headers_and_copy_without_message_id(
    channel: AbstractChannel, target: AbstractQueue, publisher: DelayedPublisher
) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(b"x"), routing_key=target.name
    )
    original = await get_one(target)
    await publisher.retry(
        original,
        TEN_MS(),
        target_queue=target.name,
        extra_headers={"reason": "busy"},
    )
    await original.ack()
    copy = await get_one(target)
    await copy.ack()
    assert copy.headers["reason"] == "busy"
    assert copy.message_id  # aiormq needs one to match a returned copy


def publish_over_http(api_url: str, queue: str, body: str) -> None:
    """Publish with no properties at all (aio-pika would add a message_id)."""
    parts = urllib.parse.urlsplit(api_url)
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port}"
        "/api/exchanges/%2F/amq.default/publish",
        data=json.dumps(
            {
                "properties": {},
                "routing_key": queue,
                "payload": body,
                "payload_encoding": "string",
            }
        ).encode(),
        headers={"Authorization": f"Basic {token}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response) == {"routed": True}


async def test_copy_of_a_message_without_message_id(
    target: AbstractQueue, publisher: DelayedPublisher, broker: Any
) -> None:
    await asyncio.to_thread(publish_over_http, broker.api_url, target.name, "bare")
    original = await get_one(target)
    assert original.message_id is None

    await publisher.retry(original, TEN_MS(), target_queue=target.name)
    await original.ack()
    copy = await get_one(target)
    await copy.ack()
    assert copy.body == b"bare"
    assert copy.message_id  # aiormq needs one to match a returned copy
    assert copy.headers[RETRIES_HEADER] == 1


async def second_copy(
    channel: AbstractChannel,
    target: AbstractQueue,
    publisher: DelayedPublisher,
    caplog: pytest.LogCaptureFixture,
    *,
    delay_ms: int,
    between: Callable[[], Awaitable[None]],
    body: bytes = b"payload",
) -> tuple[AbstractIncomingMessage, list[str]]:
    """Place a copy of a fresh message, run ``between``, then place a copy of that.

    Returns the second copy (acked) and the publisher's warnings while placing it;
    the publisher is closed.
    """
    policy = fast_backoff(schedule=(delay_ms,))
    try:
        await publish(channel, target.name, body)
        await publisher.retry(await get_one(target), policy(), target_queue=target.name)
        first = await get_one(target)
        await between()
        with caplog.at_level(logging.WARNING, logger="aio_backoff"):
            await publisher.retry(first, policy(), target_queue=target.name)
        second = await get_one(target)
        await second.ack()
    finally:
        await publisher.close()
    return second, retried_warnings(caplog)


async def test_deleted_delay_queue_is_declared_again_when_the_copy_returns(
    channel: AbstractChannel,
    target: AbstractQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = DelayedPublisher(
        channel, topology="per-delay", lease_book=LeaseBook(clock=Clock())
    )
    queue = delay_queue(23)

    async def delete_it() -> None:  # as if it had expired; the lease looks fresh
        await channel.queue_delete(queue.name)

    second, warnings = await second_copy(
        channel, target, publisher, caplog, delay_ms=23, between=delete_it, body=b"one"
    )

    assert second.headers[RETRIES_HEADER] == 2
    [warning] = warnings
    assert "312 NO_ROUTE" in warning
    assert queue.name in warning


async def test_expired_delay_queue_is_declared_again_when_the_copy_returns(
    channel: AbstractChannel, target: AbstractQueue, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()  # never moves: the publisher believes its lease is fresh
    publisher = DelayedPublisher(
        channel, topology="per-delay", grace_ms=150, lease_book=LeaseBook(clock=clock)
    )

    async def let_it_expire() -> None:  # x-expires = 31 + 150 ms: the broker deletes it
        await asyncio.sleep(0.5)

    second, warnings = await second_copy(
        channel, target, publisher, caplog, delay_ms=31, between=let_it_expire
    )

    assert second.headers[RETRIES_HEADER] == 2
    assert len(warnings) == 1


async def test_lease_older_than_half_the_grace_is_renewed_before_publishing(
    channel: AbstractChannel, target: AbstractQueue, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    publisher = DelayedPublisher(
        channel, topology="per-delay", lease_book=LeaseBook(clock=clock)
    )

    async def delete_it_and_age_the_lease() -> None:
        await channel.queue_delete(delay_queue(29).name)
        clock.now += 2.5  # half of the 5000 ms grace period

    second, warnings = await second_copy(
        channel,
        target,
        publisher,
        caplog,
        delay_ms=29,
        between=delete_it_and_age_the_lease,
    )

    assert second.headers[RETRIES_HEADER] == 2
    assert warnings == []  # declared before publishing: no return


async def test_a_closed_publisher_with_a_fresh_lease_opens_its_channel_again(
    channel: AbstractChannel, target: AbstractQueue, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = DelayedPublisher(channel, topology="per-delay")

    async def close_it() -> None:
        await publisher.close()
        # the lease is still fresh: the next publish declares nothing, only opens
        assert not publisher.lease_book.needs_declare(delay_queue(41))

    second, warnings = await second_copy(
        channel, target, publisher, caplog, delay_ms=41, between=close_it, body=b"one"
    )

    assert second.body == b"one"
    assert second.headers[RETRIES_HEADER] == 2
    assert warnings == []


class SlowDeclares(LeaseBook):
    """A lease book whose clock moves half the grace period while a declare runs."""

    def __init__(self) -> None:
        self.clock = Clock()
        super().__init__(clock=self.clock)

    def now(self) -> float:
        started = super().now()
        self.clock.now += 2.5
        return started


async def test_a_lease_is_dated_from_before_its_declare(
    channel: AbstractChannel, target: AbstractQueue
) -> None:
    book = SlowDeclares()
    publisher = DelayedPublisher(channel, topology="per-delay", lease_book=book)
    await publish(channel, target.name)
    original = await get_one(target)
    try:
        await publisher.retry(original, TEN_MS(), target_queue=target.name)
    finally:
        await publisher.close()
    await original.ack()
    copy = await get_one(target)
    await copy.ack()

    # the declare took half the grace period: the lease is due again already
    assert book.needs_declare(delay_queue(10))


async def test_copies_sharing_a_message_id_are_all_placed(
    channel: AbstractChannel, target: AbstractQueue
) -> None:
    clock = Clock()
    publisher = DelayedPublisher(
        channel, topology="per-delay", lease_book=LeaseBook(clock=clock)
    )
    queue = delay_queue(37)
    policy = fast_backoff(schedule=(37,))
    for body in (b"a", b"b", b"c"):
        await publish(channel, target.name, body, message_id="same")
    originals = [await get_one(target) for _ in range(3)]
    await publisher.retry(originals[0], policy(), target_queue=target.name)
    await channel.queue_delete(queue.name)  # the next copies come back once

    await asyncio.gather(
        *(
            publisher.retry(message, policy(), target_queue=target.name)
            for message in originals
        )
    )
    for message in originals:
        await message.ack()
    copies = sorted([(await get_one(target)).body for _ in range(3)])
    await publisher.close()
    assert copies == [b"a", b"b", b"c"]


async def test_concurrent_first_copies_share_one_publishing_channel(
    channel: AbstractChannel, target: AbstractQueue, publisher: DelayedPublisher
) -> None:
    for body in (b"a", b"b", b"c"):
        await publish(channel, target.name, body)
    originals = [await get_one(target) for _ in range(3)]

    await asyncio.gather(
        *(
            publisher.retry(message, TEN_MS(), target_queue=target.name)
            for message in originals
        )
    )
    for message in originals:
        await message.ack()

    copies = sorted([(await get_one(target)).body for _ in range(3)])
    assert copies == [b"a", b"b", b"c"]
    underlay = await channel.get_underlay_channel()
    assert len(underlay.connection.channels) == 1  # the test's: copies go elsewhere
    own = publisher.connection._connection
    assert own is not None
    assert own.transport is not None
    assert len(own.transport.connection.channels) == 1  # one publishing channel


async def test_returned_again_after_a_fresh_declare_is_not_placed(
    channel: AbstractChannel,
    target: AbstractQueue,
    declared: Any,
    unique_name: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchange = declared.exchange(unique_name("exchange"))
    await channel.declare_exchange(exchange, "headers", durable=True)
    publisher = DelayedPublisher(channel, topology="per-delay", delay_exchange=exchange)

    async def no_declare(*_: Any) -> None:
        return None  # the delay queue is never there: every copy comes back

    monkeypatch.setattr(publisher.leases, "_declare", no_declare)
    await publish(channel, target.name)
    original = await get_one(target)

    with pytest.raises(CopyNotPlaced, match="also after a fresh declare") as caught:
        await publisher.retry(original, TEN_MS(), target_queue=target.name)
    await publisher.close()
    assert "312 NO_ROUTE" in str(caught.value)
    assert target.name in str(caught.value)
    assert not original.processed


async def test_missing_exchange_is_declared_again(
    channel: AbstractChannel,
    target: AbstractQueue,
    declared: Any,
    unique_name: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exchange = declared.exchange(unique_name("exchange"))
    publisher = DelayedPublisher(channel, topology="per-delay", delay_exchange=exchange)
    await publish(channel, target.name)
    original = await get_one(target)
    await publisher.retry(original, TEN_MS(), target_queue=target.name)
    await original.ack()
    copy = await get_one(target)
    await channel.exchange_delete(exchange)  # deleted behind the publisher's back

    await publisher.retry(copy, TEN_MS(), target_queue=target.name)
    await copy.ack()
    again = await get_one(target)
    await again.ack()
    assert again.headers[RETRIES_HEADER] == 2

    # and when it cannot be declared at all, the copy is not placed
    async def no_declare(*_: Any) -> None:
        return None

    monkeypatch.setattr(publisher.leases, "_declare", no_declare)
    await channel.exchange_delete(exchange)
    await publish(channel, target.name)
    original = await get_one(target)
    with pytest.raises(CopyNotPlaced, match="NOT_FOUND"):
        await publisher.retry(original, TEN_MS(), target_queue=target.name)
    await publisher.close()
    await original.nack(requeue=False)


async def test_nacked_copy_is_not_placed(
    channel: AbstractChannel,
    target: AbstractQueue,
    declared: Any,
    unique_name: Any,
) -> None:
    exchange = declared.exchange(unique_name("exchange"))
    await channel.declare_exchange(exchange, "headers", durable=True)
    rejecting = await channel.declare_queue(
        declared.queue(unique_name("rejecting")),
        durable=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await rejecting.bind(exchange, arguments={"backoff": 10, "x-match": "any"})
    publisher = DelayedPublisher(channel, topology="per-delay", delay_exchange=exchange)
    await publish(channel, target.name)
    original = await get_one(target)

    nacking = await publisher.connection.channel()
    with pytest.raises(CopyNotPlaced, match="nacked by the broker"):
        await publisher.retry(original, TEN_MS(), target_queue=target.name)
    # the next copy goes out on a fresh channel (a nacking channel may go on
    # nacking), the old one closed later; uncertain: another queue may have it
    assert publisher.uncertain_publishes == 1
    fresh = await publisher.connection.channel()
    assert fresh is not nacking
    assert not nacking.is_closed  # confirms of other publishes may still come
    await publisher.close()
    assert not original.processed
    await original.ack()
    stray = await get_one(target)  # the delay queue took its copy all the same
    await stray.ack()


async def test_declare_error_spares_the_consuming_channel(
    channel: AbstractChannel,
    target: AbstractQueue,
    declared: Any,
    unique_name: Any,
) -> None:
    exchange = declared.exchange(unique_name("exchange"))
    await channel.declare_exchange(exchange, "direct")  # not a headers exchange
    publisher = DelayedPublisher(channel, topology="per-delay", delay_exchange=exchange)
    await publish(channel, target.name)
    original = await get_one(target)

    with pytest.raises(CopyNotPlaced, match="PRECONDITION_FAILED") as caught:
        await publisher.retry(original, TEN_MS(), target_queue=target.name)
    assert "could not be placed" in str(caught.value)
    assert caught.value.permanent
    assert not channel.is_closed
    await original.nack(requeue=True)  # the consuming channel still works

    await channel.exchange_delete(exchange)
    message = await get_one(target)
    await publisher.retry(  # on a fresh publishing channel
        message, TEN_MS(), target_queue=target.name
    )
    await message.ack()
    copy = await get_one(target)
    await copy.ack()
    await publisher.close()
    await publisher.close()  # idempotent
    assert copy.headers[RETRIES_HEADER] == 1


async def test_retry_raises_expired_and_publishes_nothing(
    channel: AbstractChannel, target: AbstractQueue, publisher: DelayedPublisher
) -> None:
    await publish(channel, target.name, headers={RETRIES_HEADER: 3})
    original = await get_one(target)
    with pytest.raises(Backoff.Expired) as caught:
        await publisher.retry(
            original, fast_backoff(schedule=(10,), limit=3)(), target_queue=target.name
        )
    assert isinstance(caught.value.__cause__, Backoff)
    await original.ack()
    await asyncio.sleep(0.1)
    assert await target.get(fail=False) is None


async def test_park_publishes_to_the_parking_queue(
    channel: AbstractChannel,
    target: AbstractQueue,
    publisher: DelayedPublisher,
    declared: Any,
) -> None:
    parking = declared.queue(f"{target.name}.parked")
    await publish(channel, target.name, b"body", headers={"a": 1}, expiration=60)
    original = await get_one(target)

    assert (
        await publisher.park(original, queue=target.name, error=ValueError("gave up"))
        == parking
    )
    await original.ack()
    queue = await channel.declare_queue(parking, passive=True)
    parked = await get_one(queue)
    await parked.ack()
    assert parked.body == b"body"
    assert parked.expiration is None
    assert parked.headers == {
        "a": 1,
        "backoff-error": "gave up",
        "backoff-queue": target.name,
    }


async def test_park_failure_is_not_placed(
    channel: AbstractChannel,
    target: AbstractQueue,
    publisher: DelayedPublisher,
    declared: Any,
) -> None:
    parking = declared.queue(f"{target.name}.parked")
    await channel.declare_queue(  # a parking queue that nacks every publish
        parking,
        durable=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    await publish(channel, target.name)
    original = await get_one(target)

    with pytest.raises(CopyNotPlaced, match=r"parked copy .* nacked") as caught:
        await publisher.park(original, queue=target.name, error=ValueError("x"))
    assert not caught.value.permanent
    assert not original.processed
    await original.ack()


def close_its_channel_once(publisher: DelayedPublisher) -> None:
    """The first publish finds its channel closed by someone else, as when a
    concurrent publish's declare is refused on the shared channel."""
    connection = publisher.connection
    opened_by = connection.channel
    closed: list[bool] = []

    async def channel() -> Any:
        opened = await opened_by()
        if not closed:
            closed.append(True)
            await opened.close()
        return opened

    connection.channel = channel  # type: ignore[method-assign]


async def test_channel_closed_under_a_publish_is_reopened_and_the_copy_placed(
    channel: AbstractChannel,
    target: AbstractQueue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = DelayedPublisher(channel, topology="per-delay")
    close_its_channel_once(publisher)
    await publish(channel, target.name, b"one")
    with caplog.at_level(logging.WARNING, logger="aio_backoff"):
        await publisher.retry(
            await get_one(target),
            fast_backoff(schedule=(24,))(),
            target_queue=target.name,
        )
    copy = await get_one(target)
    await copy.ack()
    await publisher.close()

    assert copy.body == b"one"
    assert copy.headers[RETRIES_HEADER] == 1
    [warning] = retried_warnings(caplog)
    assert "channel closed" in warning


async def test_a_copy_confirmed_after_the_grace_period_is_placed_once_more(
    channel: AbstractChannel, target: AbstractQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """The lease was fresh when the publish began, but the publish took longer than
    the grace period (flow control, a slow socket): the queue may have expired with
    the copy in it, so the copy is declared and published again (a duplicate, not a
    loss)."""
    clock = Clock()
    publisher = DelayedPublisher(
        channel, topology="per-delay", lease_book=LeaseBook(clock=clock)
    )
    placement = publisher.placement
    address = placement.address
    stalls = [5.0]  # the first publish after the lease check takes a grace period

    def stalled_address(plan: Any) -> tuple[str, str]:
        if stalls:
            clock.now += stalls.pop()
        return address(plan)

    policy = fast_backoff(schedule=(43,))
    try:
        await publish(channel, target.name, b"slow")
        original = await get_one(target)
        placement.address = stalled_address  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="aio_backoff"):
            await publisher.retry(original, policy(), target_queue=target.name)
        await original.ack()
        first, second = await get_one(target), await get_one(target)
        await first.ack()
        await second.ack()
    finally:
        await publisher.close()

    assert first.body == second.body == b"slow"
    assert publisher.uncertain_publishes == 1
    assert any("later than the grace period" in r.getMessage() for r in caplog.records)
    assert publisher.lease_book.covers(delay_queue(43))  # declared again since
