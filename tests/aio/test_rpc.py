"""aio-pika's RPC pattern with Backoff, on a real broker (aio_backoff.aiopika._rpc)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
import requests
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.patterns import RPC, JsonRPC
from aio_pika.patterns.rpc import JsonRPCError, RPCMessageType

from aio_backoff import Backoff, CopyNotPlaced, DelayedPublisher, backoff_class
from aio_backoff.aiopika._jsonrpc import (
    EXPIRED_ERROR_TYPE,
    BackoffJsonRPC,
    RemoteBackoffExpired,
)
from aio_backoff.aiopika._rpc import BackoffRPC
from aio_backoff.core._protocol import DELAY_HEADER, RETRIES_HEADER
from aio_backoff.events import CameBack, Scheduled
from tests import brokers
from tests.aio.retrying import FAST_FAILURES, get_one
from tests.aio_fixtures import drop_ladders
from tests.observability.recording import Events
from tests.waiting import wait_until, wait_until_true

pytestmark = [pytest.mark.broker, pytest.mark.timeout(20)]

REPO = Path(__file__).resolve().parents[2]

Fast = backoff_class(schedule=(20,), limit=5, random_sigma=0, name="Fast")
TwoRetries = backoff_class(schedule=(20,), limit=2, random_sigma=0, name="TwoRetries")

MakeRPC = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make_rpc(
    connection: AbstractRobustConnection,
) -> AsyncIterator[MakeRPC]:
    """``await make_rpc(BackoffRPC, **create_kwargs)`` on a channel of its own."""
    made: list[RPC] = []

    async def make(cls: type[RPC] = BackoffRPC, **kwargs: Any) -> Any:
        channel = await connection.channel()
        if issubclass(cls, BackoffRPC):
            kwargs.setdefault("failure_policy", FAST_FAILURES)
        else:  # aio-pika's own reply queue is transient: RabbitMQ 4.3 wants exclusive
            kwargs.setdefault("exclusive", True)
        rpc = await cls.create(channel, **kwargs)
        made.append(rpc)
        return rpc

    yield make
    for rpc in reversed(made):
        await rpc.close()
    await drop_ladders(
        connection, (rpc.publisher for rpc in made if isinstance(rpc, BackoffRPC))
    )


@pytest.fixture
def method_name(unique_name: Callable[[str], str], declared: Any) -> str:
    """A unique method name whose queue is deleted after the test."""
    return declared.queue(unique_name("method"))


class Flaky:
    """A remote method that raises ``error()`` ``failures`` times, then answers."""

    def __init__(
        self, failures: int, error: Callable[[], BaseException] = Backoff
    ) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error()
        return {"answer": kwargs.get("x", 0) * 2, "attempts": len(self.calls)}


async def test_result_after_backoffs(make_rpc: MakeRPC, method_name: str) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast)
    caller = await make_rpc(RPC)
    method = Flaky(failures=3, error=Fast)
    await server.register(method_name, method, auto_delete=True, durable=True)

    result = await caller.call(method_name, {"x": 21})

    assert result == {"answer": 42, "attempts": 4}
    gaps = [b - a for a, b in zip(method.calls, method.calls[1:], strict=False)]
    assert all(gap >= 0.015 for gap in gaps), gaps  # each retry waited ~20 ms
    assert caller.futures == {}


async def test_hooks_are_told_each_retry_scheduled_and_come_back(
    make_rpc: MakeRPC, method_name: str
) -> None:
    events = Events()
    server = await make_rpc(BackoffRPC, backoff=Fast, hooks=events.hooks())
    caller = await make_rpc(RPC)
    method = Flaky(failures=2, error=Fast)
    await server.register(method_name, method, auto_delete=True, durable=True)

    assert await caller.call(method_name, {"x": 1}) == {"answer": 2, "attempts": 3}

    queue = server._format_routing_key(method_name)
    assert [(e.queue, e.attempt) for e in events.of(Scheduled)] == [
        (queue, 1),
        (queue, 2),
    ]
    back = events.of(CameBack)
    assert [(e.queue, e.attempt, e.delay_ms) for e in back] == [
        (queue, 1, 20),
        (queue, 2, 20),
    ]
    assert all(e.lateness_ms is not None and e.lateness_ms >= 0 for e in back)


async def test_proxy_call_on_one_instance(make_rpc: MakeRPC, method_name: str) -> None:
    """Server and caller on the same instance: the common aio-pika setup."""
    rpc = await make_rpc(BackoffRPC, backoff=Fast)
    method = Flaky(failures=1, error=Fast)
    await rpc.register(method_name, method, auto_delete=True, durable=True)

    result = await getattr(rpc.proxy, method_name)(x=5)

    assert result == {"answer": 10, "attempts": 2}


async def test_expiry_raises_backoff_expired_at_the_caller(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=TwoRetries)
    caller = await make_rpc(RPC)  # a plain aio-pika caller unpickles the error
    method = Flaky(failures=100, error=TwoRetries)
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(Backoff.Expired) as caught:
        await caller.call(method_name, {})

    assert len(method.calls) == 3  # the first attempt and two retries
    assert caught.value.retries == 2
    assert caught.value.limit == 2
    assert "Backoff aborted after '2' retries" in str(caught.value)


async def test_an_expired_call_is_kept_after_its_reply(
    make_rpc: MakeRPC, channel: AbstractChannel, method_name: str, declared: Any
) -> None:
    """As on every other stack: the caller gets ``Backoff.Expired`` and the call
    is then kept (parked by default), not acked away."""
    parking = declared.queue(f"{method_name}.parked")
    server = await make_rpc(BackoffRPC, backoff=TwoRetries)
    caller = await make_rpc(RPC)
    await server.register(
        method_name, Flaky(100, TwoRetries), auto_delete=True, durable=True
    )

    with pytest.raises(Backoff.Expired):
        await caller.call(method_name, {"x": 1})

    kept = await get_one(await channel.declare_queue(parking, durable=True))
    await kept.ack()
    assert "Backoff aborted after '2' retries" in kept.headers["backoff-error"]
    assert kept.headers["backoff-queue"] == method_name


async def test_a_plain_backoff_takes_the_rpc_policy(
    make_rpc: MakeRPC, method_name: str
) -> None:
    """``raise Backoff()`` in a method uses the schedule and limit given to the RPC."""
    server = await make_rpc(BackoffRPC, backoff=TwoRetries)
    method = Flaky(failures=100, error=Backoff)
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(Backoff.Expired) as caught:
        await server.call(method_name, {})

    assert caught.value.limit == 2
    assert len(method.calls) == 3
    assert method.calls[-1] - method.calls[0] < 0.5  # 20 ms delays, not 1 s


async def test_retry_for_turns_errors_into_backoff(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast, retry_for=(ConnectionError,))
    caller = await make_rpc(RPC)
    method = Flaky(failures=2, error=lambda: ConnectionError("upstream down"))
    await server.register(method_name, method, auto_delete=True, durable=True)

    assert await caller.call(method_name, {"x": 1}) == {"answer": 2, "attempts": 3}


async def test_errors_not_in_retry_for_are_replied_at_once(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast, retry_for=(ConnectionError,))
    caller = await make_rpc(RPC)
    method = Flaky(failures=5, error=lambda: KeyError("no such order"))
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(KeyError, match="no such order"):
        await caller.call(method_name, {})
    assert len(method.calls) == 1


async def test_per_method_policy_overrides_the_instance(
    make_rpc: MakeRPC, unique_name: Callable[[str], str], declared: Any
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast)  # no retry_for
    caller = await make_rpc(RPC)
    strict = declared.queue(unique_name("strict"))
    lenient = declared.queue(unique_name("lenient"))
    await server.register(strict, Flaky(5, lambda: TimeoutError("slow")), durable=True)
    await server.register(
        lenient,
        Flaky(5, lambda: TimeoutError("slow")),
        backoff=TwoRetries,
        retry_for=(TimeoutError,),
        durable=True,
    )

    with pytest.raises(TimeoutError, match="slow"):
        await caller.call(strict, {})
    with pytest.raises(Backoff.Expired) as caught:
        await caller.call(lenient, {})
    assert caught.value.limit == 2


async def test_retried_call_through_an_rpc_exchange(
    make_rpc: MakeRPC, unique_name: Callable[[str], str], declared: Any
) -> None:
    """With an RPC exchange the method's queue is ``exchange::method``."""
    exchange = declared.exchange(unique_name("rpcx"))
    server = await make_rpc(BackoffRPC, backoff=Fast, exchange=exchange)
    method = Flaky(failures=2, error=Fast)
    await server.register("double", method, auto_delete=True, durable=True)
    declared.queue(f"{exchange}::double")

    assert await server.proxy.double(x=4) == {"answer": 8, "attempts": 3}


class ReplyQueue:
    """A queue of our own used as ``reply_to``; records every reply arriving."""

    def __init__(self, channel: AbstractChannel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.replies: list[AbstractIncomingMessage] = []
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        queue = await self.channel.declare_queue(self.name, exclusive=True)
        await queue.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self.replies.append(message)
        self.arrived.set()

    async def call(self, method: str, body: bytes, correlation_id: str) -> None:
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/python-pickle",
                correlation_id=correlation_id,
                reply_to=self.name,
                type=RPCMessageType.CALL.value,
                message_id="call-1",
                app_id="test-caller",
                headers={"trace": "abc"},
            ),
            routing_key=method,
        )


class RecordingRPC(BackoffRPC):
    """Remembers every delivery of a call message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[AbstractIncomingMessage] = []

    async def on_call_message(self, method_name: str, message: Any) -> None:
        self.seen.append(message)
        await super().on_call_message(method_name, message)


@pytest.mark.parametrize("failures", [2, 100], ids=["result", "expired"])
async def test_reply_is_sent_exactly_once(
    make_rpc: MakeRPC,
    channel: AbstractChannel,
    method_name: str,
    unique_name: Callable[[str], str],
    failures: int,
) -> None:
    server = await make_rpc(RecordingRPC, backoff=TwoRetries)
    method = Flaky(failures=failures, error=TwoRetries)
    await server.register(method_name, method, auto_delete=True, durable=True)
    replies = ReplyQueue(channel, unique_name("replies"))
    await replies.start()
    correlation_id = uuid.uuid4().hex

    await replies.call(method_name, server.serialize({"x": 3}), correlation_id)
    await asyncio.wait_for(replies.arrived.wait(), 5)
    await asyncio.sleep(0.3)  # several delays' worth: no second reply may come

    assert len(replies.replies) == 1
    reply = replies.replies[0]
    assert reply.correlation_id == correlation_id
    payload = server.deserialize(reply.body)
    if failures == 2:
        assert reply.type == RPCMessageType.RESULT.value
        assert payload == {"answer": 6, "attempts": 3}
    else:
        assert reply.type == RPCMessageType.ERROR.value
        assert isinstance(payload, Backoff.Expired)
    assert len(method.calls) == 3
    seen = server.seen
    # every delivery of the call kept what the reply depends on, and the rest
    assert [m.correlation_id for m in seen] == [correlation_id] * 3
    assert [m.reply_to for m in seen] == [replies.name] * 3
    assert {(m.message_id, m.app_id, m.headers["trace"]) for m in seen} == {
        ("call-1", "test-caller", "abc")
    }
    assert [m.headers.get(RETRIES_HEADER) for m in seen] == [None, 1, 2]
    assert [m.headers.get(DELAY_HEADER) for m in seen] == [None, 20, 20]
    # nothing left behind on the method's queue
    check = await channel.declare_queue(method_name, passive=True)
    assert check.declaration_result.message_count == 0


async def test_jsonrpc_result_after_backoffs(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffJsonRPC, backoff=Fast)
    caller = await make_rpc(BackoffJsonRPC)
    await server.register(method_name, Flaky(2, Fast), auto_delete=True, durable=True)

    assert await caller.call(method_name, {"x": 7}) == {"answer": 14, "attempts": 3}


async def test_jsonrpc_expiry_is_a_catchable_backoff_expired(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(
        BackoffJsonRPC, backoff=TwoRetries, retry_for=(ConnectionError,)
    )
    caller = await make_rpc(BackoffJsonRPC)
    method = Flaky(100, lambda: ConnectionError("payment gateway down"))
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(Backoff.Expired) as caught:
        await caller.call(method_name, {})

    error = caught.value
    assert isinstance(error, RemoteBackoffExpired)
    assert isinstance(error, JsonRPCError)  # aio-pika's JSON error, as before
    assert (error.retries, error.limit) == (2, 2)
    assert error.max_delay_ms == 40
    assert error.cause == "ConnectionError('payment gateway down')"
    assert str(error) == (
        "Backoff aborted after '2' retries (~0 seconds); "
        "last error: ConnectionError('payment gateway down')"
    )
    assert error.args[1]["error"]["type"] == EXPIRED_ERROR_TYPE
    assert len(method.calls) == 3


async def test_jsonrpc_expiry_seen_by_a_plain_jsonrpc_caller(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffJsonRPC, backoff=TwoRetries)
    caller = await make_rpc(JsonRPC)
    await server.register(
        method_name, Flaky(100, Backoff), auto_delete=True, durable=True
    )

    with pytest.raises(JsonRPCError) as caught:
        await caller.call(method_name, {})

    assert not isinstance(caught.value, Backoff.Expired)
    error = caught.value.args[1]["error"]
    assert error["type"] == EXPIRED_ERROR_TYPE
    assert error["retries"] == 2
    assert error["cause"] is None  # a raised Backoff has no cause of its own
    assert "Backoff aborted after '2' retries" in error["message"]


async def test_jsonrpc_expiry_names_a_backoff_that_says_why(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffJsonRPC, backoff=TwoRetries)
    await server.register(
        method_name,
        Flaky(100, lambda: TwoRetries("ledger closed")),
        auto_delete=True,
        durable=True,
    )

    with pytest.raises(RemoteBackoffExpired) as caught:
        await server.call(method_name, {})
    assert caught.value.cause == "TwoRetries('ledger closed')"


async def test_jsonrpc_other_errors_unchanged(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffJsonRPC, backoff=Fast)
    caller = await make_rpc(BackoffJsonRPC)
    await server.register(
        method_name, Flaky(1, lambda: ValueError("bad")), durable=True
    )

    with pytest.raises(JsonRPCError) as caught:
        await caller.call(method_name, {})
    assert not isinstance(caught.value, Backoff.Expired)
    assert caught.value.args[1]["error"]["type"] == "ValueError"


async def test_jsonrpc_passes_on_an_expiry_raised_by_the_method(
    make_rpc: MakeRPC, method_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A method may pass on an upstream ``Backoff.Expired``: it is not retried."""
    server = await make_rpc(BackoffJsonRPC, backoff=Fast, host_exceptions=True)
    caller = await make_rpc(BackoffJsonRPC)
    calls: list[int] = []

    async def method() -> None:
        calls.append(1)
        raise Backoff.Expired("upstream gave up")

    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(RemoteBackoffExpired, match="upstream gave up") as caught:
        await caller.call(method_name, {})
    assert caught.value.cause is None
    assert calls == [1]
    assert any("upstream gave up" in r.getMessage() for r in caplog.records)


async def test_caller_expiration_does_not_bound_the_retries(
    make_rpc: MakeRPC, method_name: str
) -> None:
    """``expiration`` bounds the wait for a server, not the retries after it."""
    slow = backoff_class(schedule=(150,), limit=3, random_sigma=0, name="Slow")
    server = await make_rpc(BackoffRPC, backoff=slow)
    caller = await make_rpc(RPC)
    method = Flaky(2, slow)
    await server.register(method_name, method, auto_delete=True, durable=True)

    started = time.monotonic()
    result = await caller.call(method_name, {"x": 1}, expiration=0.1)  # 100 ms

    assert result == {"answer": 2, "attempts": 3}
    assert time.monotonic() - started >= 0.3  # two 150 ms retries: past 100 ms


async def test_caller_expiration_still_applies_before_a_server_takes_the_call(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast)
    caller = await make_rpc(RPC)
    calls: list[dict[str, Any]] = []

    async def method(**kwargs: Any) -> None:
        calls.append(kwargs)

    await server.register(method_name, method, auto_delete=False, durable=True)
    await server.unregister(method)  # the queue stays, nobody consumes it

    with pytest.raises(asyncio.TimeoutError):
        await caller.call(method_name, {}, expiration=0.05)
    assert calls == []
    assert server.policies == {}


async def test_caller_timeout_shorter_than_the_backoff(
    make_rpc: MakeRPC, method_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller gives up; the server finishes its retries and replies once,
    to a future that no longer exists: aio-pika drops that reply."""
    slow = backoff_class(schedule=(200,), limit=3, random_sigma=0, name="Slow")
    server = await make_rpc(BackoffRPC, backoff=slow)
    caller = await make_rpc(RPC)
    method = Flaky(1, slow)
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(caller.call(method_name, {"x": 1}), 0.05)
    assert caller.futures == {}

    def dropped() -> bool:
        return any("Unknown message" in r.getMessage() for r in caplog.records)

    async with asyncio.timeout(5):  # the retry still runs, and its reply is dropped
        while not dropped():  # noqa: ASYNC110 - caplog has no event to wait on
            await asyncio.sleep(0.02)
    assert len(method.calls) == 2
    # the caller is not disturbed: the next call works
    method.failures = 0
    assert (await caller.call(method_name, {"x": 2}))["answer"] == 4


async def test_unplaceable_copy_puts_the_call_back_on_its_queue(
    make_rpc: MakeRPC,
    channel: AbstractChannel,
    method_name: str,
    unique_name: Callable[[str], str],
    declared: Any,
) -> None:
    """The delay exchange cannot be declared (it exists as another type): a
    permanent failure. The call is parked with the reason, and the caller gets an
    error reply instead of waiting for ever; the method is not run again."""
    clash = declared.exchange(unique_name("clash"))
    parking = declared.queue(f"{method_name}.parked")
    await channel.declare_exchange(clash, aio_pika.ExchangeType.DIRECT)
    server = await make_rpc(
        BackoffRPC, backoff=Fast, delay_exchange=clash, topology="per-delay"
    )
    caller = await make_rpc(RPC)
    method = Flaky(1, Fast)
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(CopyNotPlaced, match="PRECONDITION_FAILED") as caught:
        await caller.call(method_name, {"x": 1})
    assert caught.value.permanent
    assert len(method.calls) == 1
    parked = await get_one(await channel.declare_queue(parking, passive=True))
    await parked.ack()
    assert "PRECONDITION_FAILED" in parked.headers["backoff-error"]


async def test_failed_publish_puts_the_call_back_on_its_queue(
    make_rpc: MakeRPC, method_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A transient failure (here: no channel to publish on, once) sends the call
    back to its queue after a pause; it runs again and is answered."""
    server = await make_rpc(BackoffRPC, backoff=Fast)
    caller = await make_rpc(RPC)
    method = Flaky(1, Fast)
    await server.register(method_name, method, auto_delete=True, durable=True)
    connection = server.publisher.connection
    opens = connection.channel

    async def broken_once() -> Any:
        connection.channel = opens  # type: ignore[method-assign]
        raise ConnectionError("no connection just now")

    connection.channel = broken_once  # type: ignore[method-assign]

    assert await caller.call(method_name, {"x": 1}) == {"answer": 2, "attempts": 2}
    assert any("goes back to queue" in r.getMessage() for r in caplog.records)


async def test_call_survives_a_failed_requeue(
    channel: AbstractChannel,
    method_name: str,
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The copy fails and the broker closes the consuming channel too, so the nack
    fails: the broker still has the unacked call and puts it back on its queue."""
    plain = await aio_pika.connect(brokers.current().amqp_url)  # no robust reopen
    try:
        server_channel = await plain.channel()

        class Broken(DelayedPublisher):
            async def publish_copy(self, *args: Any, **kwargs: Any) -> None:
                with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                    await server_channel.declare_queue(unique_name("nx"), passive=True)
                raise RuntimeError("publisher broke")

        server = await BackoffRPC.create(
            server_channel, backoff=Fast, publisher=Broken(server_channel)
        )
        await server.register(method_name, Flaky(100, Fast), durable=True)
        replies = ReplyQueue(channel, unique_name("replies"))
        await replies.start()

        await replies.call(method_name, server.serialize({}), "c-1")
        for _ in range(100):
            await asyncio.sleep(0.02)
            check = await channel.declare_queue(method_name, passive=True)
            if check.declaration_result.consumer_count == 0:
                break

        assert check.declaration_result.message_count == 1
        assert replies.replies == []
        # logged once the failed nack comes back, which may be after the close
        await wait_until(
            lambda: any("could not requeue" in r.getMessage() for r in caplog.records),
            what="the 'could not requeue' warning",
        )
    finally:
        await plain.close()


async def test_a_broken_schedule_is_replied_not_requeued(
    make_rpc: MakeRPC, method_name: str
) -> None:
    """A planning error is the server's bug: the caller hears of it at once."""
    broken = backoff_class(schedule=lambda index: "soon", random_sigma=0, name="Bad")
    server = await make_rpc(BackoffRPC, backoff=broken)
    method = Flaky(100, broken)
    await server.register(method_name, method, auto_delete=True, durable=True)

    with pytest.raises(TypeError, match="must return a number of ms"):
        await server.call(method_name, {})
    assert len(method.calls) == 1


async def test_execute_outside_a_call_raises_the_backoff(make_rpc: MakeRPC) -> None:
    rpc = await make_rpc(BackoffRPC, backoff=Fast)

    async def method() -> None:
        raise Fast

    with pytest.raises(Fast):
        await rpc.execute(method, {})


async def test_register_twice_keeps_the_first_policy(
    make_rpc: MakeRPC, method_name: str
) -> None:
    rpc = await make_rpc(BackoffRPC, backoff=Fast)
    await rpc.register(method_name, Flaky(0), auto_delete=True, durable=True)

    with pytest.raises(RuntimeError, match="Method name already used"):
        await rpc.register(
            method_name, Flaky(0), backoff=TwoRetries, auto_delete=True, durable=True
        )
    assert rpc.policies[method_name].backoff is Fast


async def test_failed_register_leaves_no_policy(
    make_rpc: MakeRPC, unique_name: Callable[[str], str], declared: Any
) -> None:
    rpc = await make_rpc(BackoffRPC)

    async def method() -> None:
        return None

    first = declared.queue(unique_name("first"))
    await rpc.register(first, method, auto_delete=True, durable=True)

    with pytest.raises(RuntimeError, match="Function already registered"):
        await rpc.register(declared.queue(unique_name("second")), method, durable=True)
    assert list(rpc.policies) == [first]

    async def unknown() -> None:
        return None

    await rpc.unregister(unknown)  # never registered: nothing happens
    assert list(rpc.policies) == [first]
    await rpc.unregister(method)
    assert rpc.policies == {}


@pytest.mark.parametrize(
    ("options", "exclusive"),
    [({}, True), ({"durable": True}, False), ({"exclusive": False}, False)],
)
async def test_the_reply_queue_is_exclusive_unless_durable_or_asked(
    make_rpc: MakeRPC, options: dict[str, Any], exclusive: bool
) -> None:
    """aio-pika declares it transient and non-exclusive, which RabbitMQ 4.3 refuses
    by default; another connection cannot even look at an exclusive queue."""
    transient = not options.get("durable") and not exclusive
    if transient and brokers.current().name == "rabbitmq4.3":
        pytest.skip("RabbitMQ 4.3 refuses transient non-exclusive queues")
    rpc = await make_rpc(BackoffRPC, **options)
    other = await aio_pika.connect(brokers.current().amqp_url)
    try:
        channel = await other.channel()
        if exclusive:
            with pytest.raises(aiormq.exceptions.ChannelLockedResource):
                await channel.declare_queue(rpc.result_queue.name, passive=True)
        else:
            await channel.declare_queue(rpc.result_queue.name, passive=True)
    finally:
        await other.close()


async def test_settings_are_checked(channel: AbstractChannel) -> None:
    with pytest.raises(TypeError, match="backoff must be Backoff"):
        BackoffRPC(channel, backoff=ValueError)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry_for must hold exception classes"):
        BackoffRPC(channel, retry_for=[ValueError, "oops"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"close\(timeout=...\) must be 0 or more"):
        await BackoffRPC(channel).close(timeout=-1)


class HeldPublisher(DelayedPublisher):
    """Holds its first parking publish (``what="park"``) or delayed copy
    (``what="copy"``) until ``release`` is set, and records how many of them were
    in flight each time it was closed."""

    def __init__(self, channel: AbstractChannel, what: str, **kwargs: Any) -> None:
        super().__init__(channel, failure_policy=FAST_FAILURES, **kwargs)
        self.what = what
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.in_flight = 0
        self.closed_with: list[int] = []

    async def _hold(self, what: str) -> None:
        if what == self.what and not self.held.is_set():
            self.held.set()
            await self.release.wait()

    async def park(self, message: Any, *, queue: str, error: Any) -> str:
        self.in_flight += 1
        try:
            await self._hold("park")
            return await super().park(message, queue=queue, error=error)
        finally:
            self.in_flight -= 1

    async def publish_copy(self, message: Any, plan: Any, **kwargs: Any) -> None:
        self.in_flight += 1
        try:
            await self._hold("copy")
            await super().publish_copy(message, plan, **kwargs)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed_with.append(self.in_flight)
        self.release.set()  # a close that did not wait: let the held publish go on
        await super().close()


async def _held_call(
    make_rpc: MakeRPC, channel: AbstractChannel, method_name: str, what: str
) -> tuple[BackoffRPC, HeldPublisher, asyncio.Task[Any]]:
    """A server whose method always backs off, and a call to it, held in its
    parking publish (``"park"``: the caller got ``Backoff.Expired``) or in its
    first delayed copy (``"copy"``: the caller still waits)."""
    publisher = HeldPublisher(channel, what)
    server = await make_rpc(BackoffRPC, backoff=TwoRetries, publisher=publisher)
    caller = await make_rpc(RPC)
    # not auto-delete: a call put back on its queue stays there to be counted
    await server.register(method_name, Flaky(100, TwoRetries), durable=True)
    call = asyncio.create_task(caller.call(method_name, {"x": 1}))
    await asyncio.wait_for(publisher.held.wait(), 10)
    if what == "park":
        with pytest.raises(Backoff.Expired):
            await call
    return server, publisher, call


async def _count(connection: AbstractRobustConnection, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue`` now; (0, 0) if it does not exist.

    On a channel of its own: a robust channel answers a passive declare of a queue
    it declared before from memory, with the counts of that time."""
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        found = await underlay.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0, 0
    finally:
        await channel.close()
    return found.message_count or 0, found.consumer_count or 0


@pytest.mark.parametrize("what", ["park", "copy"])
async def test_close_waits_for_a_call_settling(
    make_rpc: MakeRPC,
    connection: AbstractRobustConnection,
    method_name: str,
    declared: Any,
    what: str,
) -> None:
    """close() stops taking calls, then waits for the calls in flight to be
    settled (an expired call's parking, a delayed copy's placement, the ack)
    before it closes anything: the call is parked, or its copy placed, once."""
    parking = declared.queue(f"{method_name}.parked")
    checks = await connection.channel()
    server, publisher, call = await _held_call(make_rpc, checks, method_name, what)

    closing = asyncio.create_task(server.close())

    async def consumers_gone() -> bool:
        return closing.done() or (await _count(connection, method_name))[1] == 0

    await wait_until_true(consumers_gone, what="the method's consumer cancelled")
    assert not closing.done(), f"close() returned with the {what} still in flight"
    publisher.release.set()
    await asyncio.wait_for(closing, 10)

    assert publisher.closed_with == [0]  # nothing cut off by the close
    await server.channel.close()  # an unacked call would go back to its queue now
    if what == "park":
        kept = await get_one(await checks.declare_queue(parking, passive=True))
        await kept.ack()
        assert kept.headers["backoff-queue"] == method_name
        assert await _count(connection, parking) == (0, 0)  # parked once
        assert await _count(connection, method_name) == (0, 0)  # and acked
    else:
        copy = await get_one(await checks.declare_queue(method_name, passive=True))
        await copy.ack()
        assert copy.headers[RETRIES_HEADER] == 1  # the delayed copy, back once
        assert await _count(connection, method_name) == (0, 0)  # the original acked
        assert await _count(connection, parking) == (0, 0)
        call.cancel()


@pytest.mark.parametrize("what", ["park", "copy"])
async def test_close_puts_a_call_still_settling_after_its_timeout_back(
    make_rpc: MakeRPC,
    connection: AbstractRobustConnection,
    method_name: str,
    declared: Any,
    caplog: pytest.LogCaptureFixture,
    what: str,
) -> None:
    """A call still settling after close()'s timeout is cancelled: it goes back
    to its queue unacked, and nothing was parked or placed for it."""
    parking = declared.queue(f"{method_name}.parked")
    checks = await connection.channel()
    server, publisher, call = await _held_call(make_rpc, checks, method_name, what)

    await asyncio.wait_for(server.close(timeout=0.1), 10)  # never released

    assert publisher.closed_with == [0]
    assert any(
        "1 calls still in flight after 0.1 s" in r.getMessage() for r in caplog.records
    )

    async def back_on_its_queue() -> bool:
        return await _count(connection, method_name) == (1, 0)

    await wait_until_true(back_on_its_queue, what="the call back on its queue")
    back = await get_one(await checks.declare_queue(method_name, passive=True))
    await back.ack()
    assert back.headers.get(RETRIES_HEADER) == (2 if what == "park" else None)
    assert await _count(connection, parking) == (0, 0)
    call.cancel()


async def test_close_from_a_method_does_not_wait_for_itself(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast)
    caller = await make_rpc(RPC)
    closed = asyncio.Event()

    async def shutdown() -> str:
        await server.close(timeout=30)
        closed.set()
        return "closing"

    await server.register(method_name, shutdown, auto_delete=True, durable=True)
    assert await caller.call(method_name, {}) == "closing"
    assert closed.is_set()


async def test_a_call_delivered_while_closing_goes_back_unhandled(
    make_rpc: MakeRPC,
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    method_name: str,
) -> None:
    """A delivery that was on its way when the consumer was cancelled (here: handed
    over by hand after the close) is not run: it goes back to its queue."""
    server = await make_rpc(BackoffRPC, backoff=Fast)
    method = Flaky(0)
    await server.register(method_name, method, durable=True)
    await server.close()
    await channel.default_exchange.publish(
        aio_pika.Message(server.serialize({}), correlation_id="c-1"),
        routing_key=method_name,
    )
    late = await get_one(await channel.declare_queue(method_name, passive=True))

    await server.on_call_message(method_name, late)  # type: ignore[arg-type]

    async def back() -> bool:
        return await _count(connection, method_name) == (1, 0)

    await wait_until_true(back, what="the call back on its queue")
    assert method.calls == []


async def test_register_after_close_takes_calls_again(
    make_rpc: MakeRPC, method_name: str
) -> None:
    server = await make_rpc(BackoffRPC, backoff=Fast)
    caller = await make_rpc(RPC)
    await server.register(method_name, Flaky(0), durable=True)
    await server.close()
    assert server.routes == {}  # unregistered

    await server.register(method_name, Flaky(1, Fast), durable=True)

    assert await caller.call(method_name, {"x": 2}) == {"answer": 4, "attempts": 2}


_EXAMPLE_PARKING = re.compile(r"^example\.settle\.[0-9a-f]{6}\.parked$")


def _example_parking_queues() -> set[str]:
    """The parking queues the RPC example leaves (its expired ``settle`` call).

    The management API filters by name only on a paged request; the names are
    matched here again, so that nothing else is ever taken for one of them."""
    api = brokers.current().api_url.rstrip("/")
    response = requests.get(
        f"{api}/api/queues/%2F",
        params={
            "name": _EXAMPLE_PARKING.pattern,
            "use_regex": "true",
            "page": 1,
            "page_size": 500,
        },
        timeout=10,
    )
    response.raise_for_status()
    return {
        item["name"]
        for item in response.json()["items"]
        if _EXAMPLE_PARKING.match(item["name"])
    }


@pytest.fixture
def example_parking_cleaned() -> Any:
    """Deletes the parking queues the RPC example made (it keeps its expired call
    there for a person to look at, and exits; the management API may list its
    queue a moment later)."""
    before = _example_parking_queues()
    yield
    api = brokers.current().api_url.rstrip("/")
    deadline = time.monotonic() + 5
    made = _example_parking_queues() - before
    while not made and time.monotonic() < deadline:
        time.sleep(0.2)
        made = _example_parking_queues() - before
    for name in made:
        requests.delete(
            f"{api}/api/queues/%2F/{urllib.parse.quote(name, safe='')}", timeout=10
        )


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("example_parking_cleaned")
def test_docs_example_runs() -> None:
    env = {**os.environ, "AIO_BACKOFF_AMQP_URL": brokers.current().amqp_url}
    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "rpc.py")],
        capture_output=True,
        text=True,
        timeout=25,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "quote: 42.0 after 3 attempts" in done.stdout
    assert "caller got Backoff.Expired: Backoff aborted after '2' retries" in (
        done.stdout
    )
    # close() waited for the expired call's parking: kept once, nothing cut off
    assert done.stdout.count("; parked in 'example.settle.") == 1, done.stdout
    assert "could not" not in done.stdout
