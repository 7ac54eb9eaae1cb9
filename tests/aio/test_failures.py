"""Failures of ours never make a hot loop: each trigger, against a real broker.

Every test here failed on the main of before the ack table (the handler ran over
and over, a message was dropped, or a publish waited for ever). Each test makes
its delay queue refuse, conflict or disappear only under a delay exchange (and a
delay) of its own, so the shared ``backoff`` exchange is never disturbed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest.mock import patch

import aio_pika
import amqp
import pytest
import requests
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import (
    Backoff,
    BackoffConfigError,
    FailurePolicy,
    Retrier,
    delay_queue,
)
from tests import brokers
from tests.aio.retrying import Recorder, fast_backoff, get_one, publish
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

SLOW_FAILURES = FailurePolicy(max_transient_tries=3, first_pause_s=0.4, max_pause_s=1)
"""Pauses long enough to see a hot loop if there were one."""


def runs_per_second(recorder: Recorder) -> float:
    """The highest rate of handler runs between two consecutive runs."""
    times = [call.at for call in recorder.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return 1 / min(gaps) if gaps else 0.0


@pytest.fixture
def delay_exchange(declared: Any, unique_name: Callable[[str], str]) -> str:
    """A delay exchange of the test's own, deleted afterwards."""
    return declared.exchange(unique_name("delay"))


@pytest.fixture
def own_delay(declared: Any) -> int:
    """A delay (ms) no other test uses, so its delay queue is the test's own."""
    delay = random.randrange(3_000_000, 4_000_000)
    declared.queue(delay_queue(delay).name)
    return delay


@pytest.fixture
async def parking(
    channel: AbstractChannel, target: AbstractQueue, declared: Any
) -> AbstractQueue:
    """The target's parking queue, declared by the test (deleted afterwards)."""
    return await channel.declare_queue(
        declared.queue(f"{target.name}.parked"), durable=True
    )


async def consume(
    retrier: Retrier, target: AbstractQueue, times: int, **kwargs: Any
) -> Recorder:
    """Consume with a handler that raises ``Backoff`` on its first ``times`` runs
    (``kwargs`` are the Backoff's)."""
    recorder = Recorder()

    async def handle(message: AbstractIncomingMessage) -> None:
        if recorder.record(message) < times:
            raise retrier.policy.backoff(**kwargs)

    await retrier.consume(target, handle)
    return recorder


async def publish_raw(queue: str, headers: dict[str, Any], body: bytes = b"x") -> None:
    """Publish with py-amqp (nameko's client), which writes what pamqp cannot:
    non-UTF-8 long strings, doubles past a 32-bit float."""

    def send() -> None:
        url = brokers.current().amqp_url
        host = url.split("@")[1].rstrip("/")
        with amqp.Connection(host, userid="guest", password="guest") as connection:
            channel = connection.channel()
            message = amqp.Message(body, application_headers=headers, message_id="raw")
            channel.basic_publish(message, exchange="", routing_key=queue)

    await asyncio.to_thread(send)


# -- bad configuration: a planning error, parked once ---------------------------------


@pytest.mark.parametrize(
    "patched", [{"limit": -1}, {"limit": 3.0}, {"schedule": ()}, {"schedule": ("x",)}]
)
async def test_bad_configuration_patched_in_parks_once(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    make_retrier: Any,
    patched: dict[str, Any],
) -> None:
    policy = fast_backoff(name="Patched")
    retrier = make_retrier(backoff=policy)
    with patch.multiple(policy, **patched):
        recorder = await consume(retrier, target, times=1)
        await publish(channel, target.name, message_id="bad-config")
        parked = await get_one(parking)
        await recorder.settle(0.5)
    await parked.ack()
    assert len(recorder.calls) == 1
    assert parked.headers["backoff-error"].startswith("planning error: Patched.")


@pytest.mark.parametrize("delay_ms", [-1, float("nan"), "soon"])
async def test_a_bad_per_raise_delay_parks_once(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    make_retrier: Any,
    delay_ms: Any,
) -> None:
    retrier = make_retrier()
    recorder = await consume(retrier, target, times=1, delay_ms=delay_ms)
    await publish(channel, target.name)
    parked = await get_one(parking)
    await recorder.settle(0.5)
    await parked.ack()
    assert len(recorder.calls) == 1
    assert "delay_ms=...) must be 0 or more ms" in parked.headers["backoff-error"]


async def test_a_bad_per_raise_delay_in_process_raises_a_config_error(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    make_retrier: Any,
) -> None:
    retrier = make_retrier()
    await publish(channel, target.name)
    message = await get_one(target)
    with pytest.raises(BackoffConfigError):
        async with retrier.process(message, queue=target):
            raise Backoff(delay_ms=-1)
    parked = await get_one(parking)
    await parked.ack()


# -- hostile headers: the copy still goes out -----------------------------------------


async def test_unencodable_headers_are_converted_and_the_copy_goes_out(
    target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    recorder = await consume(retrier, target, times=1)
    await publish_raw(
        target.name,
        {
            "latin-1": b"caf\xe9",  # arrives as bytes: pamqp cannot write bytes
            "huge": 1e308,  # a double: pamqp writes 32-bit floats
            "x-death": ["a", "b"],  # RabbitMQ 3.10's dead-lettering crashes on it
        },
    )
    await recorder.wait(2)
    await recorder.settle(0.5)
    assert len(recorder.calls) == 2
    headers = recorder.calls[1].message.headers
    assert headers["latin-1"] == "caf\\xe9"
    assert headers["huge"] == "1e+308"
    assert "x-death" not in headers or headers["x-death"] != ["a", "b"]
    assert headers["backoff-retries"] == 1


async def test_a_forged_count_with_no_limit_still_fits(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(limit=None, name="Forever"))
    recorder = await consume(retrier, target, times=1)
    await publish(channel, target.name, headers={"backoff-retries": 2**63 - 1})
    await recorder.wait(2)
    await recorder.settle(0.3)
    assert len(recorder.calls) == 2
    copy = recorder.calls[1].message
    assert not copy.redelivered
    assert copy.headers["backoff"] == 20  # a delayed copy, not the original again
    assert copy.headers["backoff-retries"] == 2**63 - 1


async def test_a_forged_count_and_a_hostile_header_park_once(
    target: AbstractQueue, parking: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(backoff=fast_backoff(limit=3))
    recorder = await consume(retrier, target, times=1)
    await publish_raw(target.name, {"backoff-retries": 10**6, "huge": 1e308})
    parked = await get_one(parking)
    await recorder.settle(0.5)
    await parked.ack()
    assert len(recorder.calls) == 1
    assert parked.headers["huge"] == "1e+308"
    assert "aborted after '3' retries" in parked.headers["backoff-error"]


# -- a delay queue that refuses, conflicts, or is not ours to declare ------------------


async def test_a_refusing_delay_queue_is_retried_slowly_then_parked(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    make_retrier: Any,
    delay_exchange: str,
    own_delay: int,
) -> None:
    """A nack is transient: a growing pause, a bounded number of tries, parked."""
    grace = 600_000  # the lease stays fresh: no declare, the refusing queue stays
    queue = delay_queue(own_delay, delay_exchange=delay_exchange, grace_ms=grace)
    exchange = await channel.declare_exchange(delay_exchange, "headers", durable=True)
    refusing = await channel.declare_queue(
        queue.name,
        durable=True,
        arguments={
            **queue.arguments,
            "x-max-length": 0,
            "x-overflow": "reject-publish",
        },
    )
    await refusing.bind(exchange, arguments=queue.binding_arguments)
    retrier = make_retrier(
        delay_exchange=delay_exchange,
        grace_ms=grace,
        failure_policy=SLOW_FAILURES,
        topology="per-delay",
    )
    retrier.publisher.lease_book.declared(queue)
    recorder = await consume(retrier, target, times=10, delay_ms=own_delay)
    await publish(channel, target.name)
    parked = await get_one(parking, seconds=10)
    await recorder.settle(0.5)
    await parked.ack()

    assert len(recorder.calls) == 3  # max_transient_tries
    assert runs_per_second(recorder) < 1 / 0.35  # paused at least first_pause_s
    assert "nacked by the broker" in parked.headers["backoff-error"]


async def test_a_delay_queue_declared_elsewhere_with_another_grace_parks_once(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    make_retrier: Any,
    delay_exchange: str,
    own_delay: int,
) -> None:
    other = delay_queue(own_delay, delay_exchange=delay_exchange, grace_ms=7777)
    await channel.declare_queue(other.name, durable=True, arguments=other.arguments)
    retrier = make_retrier(delay_exchange=delay_exchange, topology="per-delay")
    recorder = await consume(retrier, target, times=10, delay_ms=own_delay)
    await publish(channel, target.name)
    parked = await get_one(parking)
    await recorder.settle(0.5)
    await parked.ack()
    assert len(recorder.calls) == 1
    assert "PRECONDITION_FAILED" in parked.headers["backoff-error"]


@pytest.fixture
async def limited_user(unique_name: Callable[[str], str]) -> AsyncIterator[str]:
    """A temporary user that may use ``test.*`` names and publish to the default
    exchange, and nothing else; its AMQP URL. Deleted afterwards."""
    broker = brokers.current()
    api, credentials = broker.api_url.split("@")[1], ("guest", "guest")
    user, password = f"aio-backoff-test-{uuid.uuid4().hex[:8]}", "secret"

    def call(method: str, path: str, body: Any = None) -> None:
        response = requests.request(
            method, f"http://{api}/api/{path}", json=body, auth=credentials, timeout=10
        )
        response.raise_for_status()

    await asyncio.to_thread(
        call, "PUT", f"users/{user}", {"password": password, "tags": ""}
    )
    try:
        await asyncio.to_thread(
            call,
            "PUT",
            f"permissions/%2F/{user}",
            {
                "configure": r"^test\..*",
                "write": r"^(test\..*|amq\.default)$",
                "read": r"^test\..*",
            },
        )
        host = broker.amqp_url.split("@")[1]
        yield f"amqp://{user}:{password}@{host}"
    finally:
        await asyncio.to_thread(call, "DELETE", f"users/{user}")


async def test_access_refused_parks_once(
    channel: AbstractChannel,
    target: AbstractQueue,
    parking: AbstractQueue,
    limited_user: str,
) -> None:
    limited = await aio_pika.connect_robust(limited_user)
    try:
        retrier = Retrier(
            await limited.channel(),
            backoff=fast_backoff(),
            delay_exchange=f"forbidden.{uuid.uuid4().hex[:8]}",
            topology="per-delay",
        )
        recorder = await consume(
            retrier, await (await limited.channel()).get_queue(target.name), times=10
        )
        await publish(channel, target.name)
        parked = await get_one(parking)
        await recorder.settle(0.5)
        await parked.ack()
        await retrier.close()
    finally:
        await limited.close()
    assert len(recorder.calls) == 1
    assert "ACCESS_REFUSED" in parked.headers["backoff-error"]


# -- final actions keep the message ---------------------------------------------------


async def test_an_existing_parking_queue_with_other_arguments_takes_the_message(
    channel: AbstractChannel,
    target: AbstractQueue,
    declared: Any,
    make_retrier: Any,
) -> None:
    parking = await channel.declare_queue(
        declared.queue(f"{target.name}.parked"),
        durable=True,
        arguments={"x-max-length": 1000},
    )
    retrier = make_retrier(backoff=fast_backoff(limit=1))
    recorder = await consume(retrier, target, times=10)
    await publish(channel, target.name)
    parked = await get_one(parking)
    await recorder.settle(0.5)
    await parked.ack()
    assert len(recorder.calls) == 2  # the first try and its one retry
    assert "aborted after '1' retries" in parked.headers["backoff-error"]


async def test_dead_letter_to_a_missing_exchange_parks_instead(
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
    make_retrier: Any,
) -> None:
    target = await channel.declare_queue(
        declared.queue(unique_name("target")),
        durable=True,
        arguments={"x-dead-letter-exchange": unique_name("missing")},
    )
    parking = await channel.declare_queue(
        declared.queue(f"{target.name}.parked"), durable=True
    )
    retrier = make_retrier(backoff=fast_backoff(limit=1))
    recorder = await consume(retrier, target, times=10)
    await publish(channel, target.name)
    parked = await get_one(parking)
    await parked.ack()
    assert len(recorder.calls) == 2


# -- confirms that do not come, channels that close ----------------------------


def drop_confirms(
    retrier: Retrier, then: Callable[[Any], Any] | None = None
) -> list[int]:
    """Make the publisher's channel ignore the broker's next confirm (the copy is
    routed, the ack never arrives); ``then(channel)`` runs when it would have."""
    dropped: list[int] = []
    connection = retrier.publisher.connection
    opens = connection.channel

    async def channel() -> Any:
        opened = await opens()
        if not dropped and not getattr(opened, "_patched", False):
            confirm = opened._confirm_delivery

            def ignore_once(tag: Any, frame: Any) -> None:
                if dropped:
                    confirm(tag, frame)
                    return
                dropped.append(tag)
                if then is not None:
                    asyncio.get_running_loop().create_task(then(opened))

            opened._confirm_delivery = ignore_once
            opened._patched = True
        return opened

    connection.channel = channel  # type: ignore[method-assign]
    return dropped


async def test_a_confirm_that_never_comes_times_out(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier(confirm_timeout=0.3)
    dropped = drop_confirms(retrier)
    recorder = Recorder()

    async def handle(message: AbstractIncomingMessage) -> None:
        recorder.record(message)
        if not message.headers.get("backoff-retries"):
            raise Backoff

    await retrier.consume(target, handle)
    await publish(channel, target.name)
    await recorder.wait(4)  # try, try again after the pause, and the two copies
    await recorder.settle(0.5)
    assert dropped
    assert len(recorder.calls) == 4
    assert retrier.publisher.uncertain_publishes == 1  # the duplicate, counted
    counts = [c.message.headers.get("backoff-retries") for c in recorder.calls]
    assert counts.count(None) == 2  # the try, and the try after the pause
    assert counts.count(1) == 2  # the copy whose confirm was lost, and the next


async def test_channel_closed_after_the_copy_was_routed_before_its_confirm(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    """The duplicate this makes is bounded (one) and counted; nothing is lost."""
    retrier = make_retrier()

    async def close(publishing: Any) -> None:
        await publishing.close()

    dropped = drop_confirms(retrier, then=close)
    recorder = await consume(retrier, target, times=1)
    await publish(channel, target.name, message_id="routed-then-closed")
    await recorder.wait(3)
    await recorder.settle(0.5)
    assert dropped
    assert len(recorder.calls) == 3  # the try, and two copies: one is a duplicate
    assert all(
        c.message.headers.get("backoff-retries") == 1 for c in recorder.calls[1:]
    )
    assert retrier.publisher.uncertain_publishes == 1
    assert await target.get(fail=False) is None


async def test_a_deleted_delay_exchange_does_not_close_the_consumers_connection(
    declared: Any,
    unique_name: Callable[[str], str],
    delay_exchange: str,
) -> None:
    """Many confirmed publishes in flight to a deleted exchange make RabbitMQ close
    the whole publishing connection (504); the consumer's is not that one."""
    plain = await aio_pika.connect(brokers.current().amqp_url)  # not robust
    try:
        consuming = await plain.channel()
        await consuming.set_qos(prefetch_count=50)
        target = await consuming.declare_queue(
            declared.queue(unique_name("target")), durable=True
        )
        retrier = Retrier(
            consuming,
            backoff=fast_backoff(schedule=(30,)),
            topology="per-delay",  # its exchange is never declared (fresh lease)
            delay_exchange=delay_exchange,
            failure_policy=FailurePolicy(first_pause_s=0.1, max_pause_s=0.5),
        )
        retrier.publisher.lease_book.declared(
            delay_queue(30, delay_exchange=delay_exchange)
        )
        done: set[bytes] = set()
        finished = asyncio.Event()

        async def handle(message: AbstractIncomingMessage) -> None:
            if not message.headers.get("backoff-retries"):
                raise Backoff
            done.add(message.body)
            if len(done) == 40:
                finished.set()

        await retrier.consume(target, handle)
        for n in range(40):
            await publish(consuming, target.name, str(n).encode())
        async with asyncio.timeout(20):
            await finished.wait()
        assert not plain.is_closed
        assert not consuming.is_closed
        await retrier.close()
    finally:
        await plain.close()


# -- graceful stop --------------------------------------------------------------


async def test_stop_lets_handlers_in_flight_finish(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    started, finished = [], []

    async def slow(message: AbstractIncomingMessage) -> None:
        started.append(message.body)
        await asyncio.sleep(0.3)
        finished.append(message.body)

    await retrier.consume(target, slow)
    for body in (b"a", b"b"):
        await publish(channel, target.name, body)
    async with asyncio.timeout(5):
        while len(started) < 2:  # noqa: ASYNC110 - waits for a condition
            await asyncio.sleep(0.01)
    await retrier.stop(timeout=5)
    assert sorted(finished) == [b"a", b"b"]
    await publish(channel, target.name, b"after")
    back = await get_one(target)  # nobody consumes it any more
    await back.ack()
    assert back.body == b"after"


async def test_stop_requeues_what_does_not_finish_in_time(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    retrier = make_retrier()
    started = asyncio.Event()

    async def stuck(message: AbstractIncomingMessage) -> None:
        started.set()
        await asyncio.sleep(60)

    await retrier.consume(target, stuck)
    await publish(channel, target.name, b"stuck")
    await started.wait()
    began = time.monotonic()
    await retrier.stop(timeout=0.2)
    assert time.monotonic() - began < 3
    back = await get_one(target)
    await back.ack()
    assert back.body == b"stuck"
    assert back.redelivered


# -- the gate: no handler runs while the publisher cannot publish at all -------------

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"
"""No broker listens on port 1: a publisher pointed here cannot publish at all."""


async def cut_off(publisher: Any) -> str:
    """Make ``publisher`` unable to publish (its own connection goes to a port no
    broker listens on); returns the URL to give back with :func:`restore`."""
    good = await publisher.connection._url()
    await publisher.connection.close()
    publisher.connection.url = UNREACHABLE
    return str(good)


async def test_no_handler_runs_while_the_publisher_cannot_publish(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any
) -> None:
    """The first copy that cannot go closes the gate: the other messages wait
    unhandled (instead of each running its handler and going round) until a probe
    reaches the broker again; then every message is handled."""
    retrier = make_retrier(failure_policy=FAST_FAILURES_FOR_GATE)
    publisher = retrier.publisher
    good = await cut_off(publisher)
    started_while_closed: list[bool] = []
    succeeded: set[str] = set()

    async def handle(message: AbstractIncomingMessage) -> None:
        started_while_closed.append(not publisher.available)
        if (message.headers or {}).get("backoff-retries") is None:
            raise retrier.policy.backoff()
        succeeded.add(str(message.message_id))

    await retrier.consume(target, handle)
    for n in range(5):
        await publish(channel, target.name, message_id=f"gated-{n}")
    await wait_until(lambda: not publisher.available, what="the gate to close")
    runs_when_closed = len(started_while_closed)
    publisher.connection.url = good  # the probe reaches the broker again
    await wait_until(lambda: len(succeeded) == 5, what="every message handled")
    assert not any(started_while_closed), "a handler ran while the gate was closed"
    assert runs_when_closed <= 5  # at most each message once before it closed


FAST_FAILURES_FOR_GATE = FailurePolicy(
    max_transient_tries=0, first_pause_s=0.05, max_pause_s=0.2
)
"""Never give up on a transient failure: the gate test needs every message back."""
