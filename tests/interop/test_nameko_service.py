"""NamekoService, NamekoRpcClient and EventDispatcher on a real broker.

The asyncio half of the bridge on its own: errors as nameko reports them, call-id
stacks and context across calls and events, handler types, lifecycle (graceful
stop, shutdown timeout, reconnection) and what happens when a copy cannot be placed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from aiormq.exceptions import ChannelInvalidStateError

from aio_backoff import (
    BROADCAST,
    DEFAULT_DELAY_EXCHANGE,
    SINGLETON,
    Backoff,
    EventDispatcher,
    ExpiredMessage,
    IncorrectSignature,
    Ladder,
    MalformedRequest,
    MethodNotFound,
    NamekoRpcClient,
    NamekoService,
    RemoteError,
    RemoteExpired,
    RpcTimeout,
    UnknownService,
    current_call,
    park,
    parking_queue_name,
)
from aio_backoff.aiopika._publisher import DelayedPublisher
from aio_backoff.core import FailurePolicy
from aio_backoff.core.nameko_wire import RPC_METHOD_ID_HEADER, dumps
from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import Fast, new_job
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


class Unavailable(Exception):
    pass


@pytest.fixture
def service_name(unique_name: Callable[[str], str]) -> str:
    return unique_name("svc").replace(".", "_")


@pytest.fixture
async def rpc(
    connection: AbstractRobustConnection, declared: Any
) -> AsyncIterator[NamekoRpcClient]:
    async with NamekoRpcClient(connection, timeout=10) as client:
        declared.queue(client.reply_queue)
        yield client


ServiceFactory = Callable[..., NamekoService]


@pytest.fixture
def new_service(
    connection: AbstractRobustConnection, declared: Any, service_name: str
) -> Iterator[ServiceFactory]:
    """``new_service(**options)``: a NamekoService (named ``service_name`` on the
    test's connection unless ``name=``/``connection=`` say otherwise) whose queues
    and events exchange are deleted after the test."""
    made: list[NamekoService] = []

    def make(
        name: str = service_name,
        connection: AbstractConnection = connection,
        **options: Any,
    ) -> NamekoService:
        service = NamekoService(connection, name, **options)
        made.append(service)
        return service

    yield make
    for service in made:  # now that the test registered its handlers
        if service.delay_exchange != DEFAULT_DELAY_EXCHANGE:
            declared.ladder(Ladder(service.delay_exchange, service.queue_type))
        declared.queue(service.rpc_queue)
        declared.queue(parking_queue_name(service.rpc_queue))
        declared.exchange(f"{service.name}.events")
        for queue in service.event_queues():
            declared.queue(queue)
            declared.queue(parking_queue_name(queue))


async def send_request(
    channel: AbstractChannel,
    service: NamekoService,
    method: str | None,
    body: bytes = dumps({"args": [], "kwargs": {}}),
    *,
    headers: dict[str, Any] | None = None,
    **properties: Any,
) -> None:
    """Publish a raw request for ``service.method`` the way a caller does: to the
    RPC exchange with routing key ``{service}.{method}``. With ``method`` None it
    goes straight to the service's queue (through the default exchange)."""
    message = aio_pika.Message(body, headers=headers or {}, **properties)
    if method is None:
        await channel.default_exchange.publish(message, routing_key=service.rpc_queue)
        return
    exchange = await channel.get_exchange("nameko-rpc")
    await exchange.publish(message, routing_key=f"{service.name}.{method}")


async def send_copy(
    channel: AbstractChannel,
    service: NamekoService,
    method: str,
    body: bytes = dumps({"args": [], "kwargs": {}}),
    **properties: Any,
) -> None:
    """Publish a request the way a delayed copy comes back: to the service's queue
    through the default exchange, named by ``nameko.rpc_method_id``, with our
    ``backoff-retries`` header."""
    headers = {RPC_METHOD_ID_HEADER: f"{service.name}.{method}", "backoff-retries": 1}
    await channel.default_exchange.publish(
        aio_pika.Message(body, headers=headers, **properties),
        routing_key=service.rpc_queue,
    )


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    # not robust: a robust channel answers the next passive declare from its cache
    queue = await channel.declare_queue(name, passive=True, robust=False)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def wait_for_depth(
    channel: AbstractChannel, name: str, depth: int, *, seconds: float = 10
) -> None:
    """Wait until queue ``name`` (it exists) holds ``depth`` ready messages."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await queue_depth(channel, name)
        if found == depth:
            return
        if asyncio.get_running_loop().time() > deadline:
            msg = (
                f"queue {name!r} holds {found} messages, not {depth}, after {seconds} s"
            )
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


async def parked(channel: AbstractChannel, queue: str) -> aio_pika.abc.AbstractQueue:
    """``{queue}.parked``, declared as the service declares it (not robust: a
    robust channel answers a later passive declare of it from its cache)."""
    return await channel.declare_queue(
        parking_queue_name(queue), durable=True, robust=False
    )


async def request_with_replies(
    channel: AbstractChannel, service: NamekoService, method: str, body: bytes = b""
) -> aio_pika.abc.AbstractQueue:
    """Send a request for ``service.method``; the queue its reply comes to."""
    replies = await channel.declare_queue(exclusive=True)
    await replies.bind("nameko-rpc", routing_key=replies.name)
    await send_request(
        channel,
        service,
        method,
        body or dumps({"args": [], "kwargs": {}}),
        reply_to=replies.name,
        correlation_id=uuid.uuid4().hex,
    )
    return replies


async def get_one(queue: aio_pika.abc.AbstractQueue, *, seconds: float = 10) -> Any:
    """The next message of ``queue``, waiting up to ``seconds`` for it."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        message = await queue.get(fail=False)
        if message is not None:
            return message
        if asyncio.get_running_loop().time() > deadline:
            msg = f"no message on {queue.name!r} after {seconds} s"
            raise AssertionError(msg)
        await asyncio.sleep(0.02)


# -- RPC -----------------------------------------------------------------------------


async def test_errors_reach_the_caller_as_nameko_reports_them(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    service = new_service()

    @service.rpc
    async def fail(reason: str) -> None:
        raise ValueError(reason, 42)

    @service.rpc
    async def odd() -> object:
        return object()

    async with service:
        proxy = rpc.service(service_name)
        with pytest.raises(RemoteError) as caught:
            await proxy.fail("boom")
        assert caught.value.exc_type == "ValueError"
        assert caught.value.exc_path == "builtins.ValueError"
        assert caught.value.exc_args == ["boom", "42"]

        with pytest.raises(MethodNotFound, match="missing"):
            await proxy.missing()
        with pytest.raises(IncorrectSignature, match="argument"):
            await proxy.fail()
        with pytest.raises(RemoteError, match="Unserializable value"):
            await proxy.odd()
        with pytest.raises(AttributeError):
            proxy._private  # noqa: B018

        # a raw request that is not nameko's JSON: answered, and parked
        reply_queue = await channel.declare_queue(exclusive=True)
        await reply_queue.bind("nameko-rpc", routing_key=reply_queue.name)
        for body in (b"not json", b'{"args": []}'):
            await send_request(
                channel,
                service,
                "fail",
                body,
                reply_to=reply_queue.name,
                correlation_id="c1",
            )
        for _ in range(2):
            payload = json.loads((await get_one(reply_queue)).body)
            assert payload["error"]["exc_path"] == "nameko.exceptions.MalformedRequest"
        await parked(channel, service.rpc_queue)
        await wait_for_depth(channel, parking_queue_name(service.rpc_queue), 2)
    assert issubclass(MalformedRequest, RemoteError)


async def test_retry_for_and_a_plain_backoff_use_the_services_policy(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    service = new_service(backoff=Fast)
    calls: list[int] = []

    @service.rpc(retry_for=(Unavailable,))
    async def flaky() -> int:
        call = current_call()
        assert call is not None
        calls.append(call.retries)
        if call.retries < 2:
            raise Unavailable
        return call.retries

    @service.rpc(name="plain")
    async def plain_backoff() -> None:
        raise Backoff  # takes Fast's schedule and limit

    async with service:
        assert await rpc.call(service_name, "flaky") == 2
        with pytest.raises(Backoff.Expired) as caught:
            await rpc.call(service_name, "plain")
        # the caller got the error, and the expired request is kept, not acked away
        kept = await get_one(await parked(channel, service.rpc_queue))
    assert "Backoff aborted after '3' retries" in kept.headers["backoff-error"]
    assert calls == [0, 1, 2]
    assert isinstance(caught.value, RemoteExpired)
    assert caught.value.limit == 3


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_service_on_the_ladder_retries_with_one_count(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
    queue_type: Literal["classic", "quorum"],
) -> None:
    """``topology="ladder"``: the retried request comes back through the ladder's
    deliver exchange (its routing key is the ladder's, not ``{service}.{method}``),
    is routed to its method by the trusted method-id header, and the caller gets
    the result."""
    delay_exchange = f"test.{service_name}"
    ladder = Ladder(delay_exchange, queue_type)  # deleted by new_service
    service = new_service(
        backoff=Fast,
        topology="ladder",
        queue_type=queue_type,
        delay_exchange=delay_exchange,
    )
    seen: list[int] = []

    @service.rpc(retry_for=(Unavailable,))
    async def flaky() -> int:
        call = current_call()
        assert call is not None
        seen.append(call.retries)
        if call.retries < 2:
            raise Unavailable
        return call.retries

    async with service:
        # declared whole at start: no per-delay queue is ever made
        assert await queue_depth(channel, ladder.level(0)) == 0
        assert await rpc.call(service_name, "flaky") == 2
    assert seen == [0, 1, 2]


async def test_unknown_service_and_timeout(
    connection: AbstractRobustConnection,
    declared: Any,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    release = asyncio.Event()
    service = new_service()

    @service.rpc
    async def slow() -> str:
        await release.wait()
        return "late"

    @service.rpc
    async def quick() -> str:
        return "quick"

    async with (
        service,
        NamekoRpcClient(connection, timeout=0.2, name="impatient") as client,
    ):
        declared.queue(client.reply_queue)
        assert client.reply_queue.startswith("rpc.reply-impatient-")
        with pytest.raises(UnknownService, match="ghost"):
            await client.call(f"{service_name}_ghost", "anything")
        with pytest.raises(RpcTimeout, match="no reply"):
            await client.call(service_name, "slow")
        release.set()  # the late reply arrives and is dropped
        await asyncio.sleep(0.1)
        assert await client.call(service_name, "quick") == "quick"


async def test_client_must_be_started_and_close_fails_waiting_calls(
    connection: AbstractRobustConnection,
    declared: Any,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    client = NamekoRpcClient(connection)
    with pytest.raises(RuntimeError, match="not started"):
        await client.call("x", "y")
    await client.close()  # never started: nothing to do

    service = new_service()
    entered = asyncio.Event()

    @service.rpc
    async def hang() -> None:
        entered.set()
        await asyncio.sleep(30)

    service.shutdown_timeout = 0.1
    async with service:
        await client.start()
        await client.start()  # idempotent
        declared.queue(client.reply_queue)
        waiting = asyncio.create_task(client.call(service_name, "hang"))
        await entered.wait()
        await client.close()
        with pytest.raises(ConnectionError, match="closed while call"):
            await waiting

        # closed while the call is still being published
        await client.start()
        declared.queue(client.reply_queue)
        sending = asyncio.create_task(client.call(service_name, "hang"))
        await asyncio.sleep(0)
        await client.close()
        with pytest.raises(ConnectionError, match="closed while call"):
            await sending


async def test_client_start_failure_closes_its_channel(
    connection: AbstractRobustConnection,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    exchange = declared.exchange(unique_name("fanout"))
    channel = await connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
    client = NamekoRpcClient(connection, rpc_exchange=exchange)
    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await client.start()
    with pytest.raises(RuntimeError, match="not started"):
        await client.call("x", "y")


async def test_nested_calls_and_events_carry_the_call_id_stack(
    connection: AbstractRobustConnection,
    nameko_side: NamekoSide,
    declared: Any,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """An asyncio handler calls a nameko service and dispatches an event; both carry
    its call-id stack and context, as a nameko worker's would."""
    service = new_service()
    events: list[tuple[Any, Any]] = []

    @service.rpc
    async def outer(job: dict[str, Any]) -> Any:
        async with NamekoRpcClient(connection, timeout=10) as inner:
            declared.queue(inner.reply_queue)
            result = await inner.call(nameko_side.service, "work", job)
        await service.dispatch("outer_done", {"result": result})
        return result

    @service.event_handler(service_name, "outer_done")
    async def on_outer_done(payload: Any) -> None:
        call = current_call()
        assert call is not None
        events.append((payload, call))

    job = new_job(0, "nested")
    async with (
        service,
        NamekoRpcClient(
            connection, timeout=10, context_data={"user_id": "u-7"}
        ) as client,
    ):
        declared.queue(client.reply_queue)
        result = await client.call(service_name, "outer", job)
        await wait_until(lambda: bool(events), what="the event")
    assert result == {"key": job["key"], "retries": 0, "side": "nameko_bridge"}

    await wait_until(lambda: bool(nameko_side.report.for_key(job["key"])))
    (record,) = nameko_side.report.for_key(job["key"])
    client_id, outer_id, nameko_id = record["call_id_stack"]
    assert client_id.startswith("aio_rpc_client.call.")
    assert outer_id.startswith(f"{service_name}.outer.")
    assert nameko_id.startswith(f"{nameko_side.service}.work.")

    payload, call = events[0]
    assert payload == {"result": result}
    assert call.call_id_stack[:2] == (client_id, outer_id)
    assert call.call_id.startswith(f"{service_name}.on_outer_done.")
    assert call.data == {"user_id": "u-7"}


def test_only_async_handlers_and_reliable_broadcasts(
    connection: AbstractRobustConnection,
) -> None:
    service = NamekoService(connection, "unused")

    def blocking() -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        service.rpc(blocking)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="async def"):
        service.event_handler("a", "b")(blocking)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="broadcast_identifier"):
        service.event_handler("a", "b", handler_type=BROADCAST)(
            TestHandlerTypes.handler
        )


# -- events --------------------------------------------------------------------------


async def test_concurrent_first_dispatches_open_one_channel(
    connection: AbstractRobustConnection,
    declared: Any,
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = unique_name("src").replace(".", "_")
    declared.exchange(f"{source}.events")
    opened: list[object] = []
    open_channel = connection.channel

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return open_channel(*args, **kwargs)

    monkeypatch.setattr(connection, "channel", counting)
    dispatcher = EventDispatcher(connection)
    try:
        await asyncio.gather(
            dispatcher(source, "ping", {"n": 1}), dispatcher(source, "ping", {"n": 2})
        )
    finally:
        await dispatcher.close()
    assert len(opened) == 1


class TestHandlerTypes:
    @staticmethod
    async def handler(payload: Any) -> None:
        pass

    async def test_broadcast_reaches_every_instance_singleton_only_one(
        self,
        connection: AbstractRobustConnection,
        declared: Any,
        unique_name: Callable[[str], str],
        new_service: ServiceFactory,
    ) -> None:
        source = unique_name("src").replace(".", "_")
        declared.exchange(f"{source}.events")
        got: dict[str, list[Any]] = {}
        services = []
        for n in range(2):
            service = new_service(name=f"{source}_listener{n}")

            async def broadcast(payload: Any, n: int = n) -> None:
                got.setdefault(f"broadcast{n}", []).append(payload)

            async def singleton(payload: Any, n: int = n) -> None:
                got.setdefault("singleton", []).append((n, payload))

            service.event_handler(
                source, "ping", handler_type=BROADCAST, reliable_delivery=False
            )(broadcast)
            service.event_handler(source, "ping", handler_type=SINGLETON)(singleton)
            services.append(service)

        assert services[0].event_queues()[1] == f"evt-{source}-ping"
        async with services[0], services[1], EventDispatcher(connection) as dispatch:
            await dispatch(source, "ping", {"n": 1})
            await dispatch(source, "ping", {"n": 2})
            await wait_until(
                lambda: (
                    len(got.get("singleton", [])) == 2
                    and all(len(got.get(f"broadcast{n}", [])) == 2 for n in range(2))
                )
            )
        assert got["broadcast0"] == got["broadcast1"] == [{"n": 1}, {"n": 2}]
        assert sorted(p["n"] for _, p in got["singleton"]) == [1, 2]


async def test_event_errors_are_acked_and_expiry_actions_run(
    channel: AbstractChannel,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
    new_service: ServiceFactory,
) -> None:
    """A failing handler is logged and acked (as nameko); a body that is not JSON
    is parked with the reason; an expiry action that does not settle leaves the ack
    to the service."""
    service = new_service(backoff=Fast)
    seen: list[Any] = []
    expired: list[ExpiredMessage] = []

    @service.event_handler(service_name, "broken")
    async def broken(payload: Any) -> None:
        seen.append(payload)
        raise RuntimeError("handler bug")

    async def remember(message: ExpiredMessage) -> None:
        expired.append(message)

    @service.event_handler(service_name, "doomed", on_expired=remember)
    async def doomed(payload: Any) -> None:
        raise Backoff

    caplog.set_level(logging.INFO, logger="aio_backoff")
    async with service:
        broken_queue, _ = service.event_queues()
        parking = await parked(channel, broken_queue)
        exchange = await channel.get_exchange(f"{service_name}.events")
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key="broken")
        await service.dispatch("broken", {"n": 1})
        await service.dispatch("doomed", {"n": 2})
        await wait_until(lambda: bool(seen) and bool(expired))
        kept = await get_one(parking)
        for queue in service.event_queues():
            assert await queue_depth(channel, queue) == 0
    assert kept.body == b"{not json"
    assert "undecodable" in kept.headers["backoff-error"]
    assert "not nameko's JSON" in kept.headers["backoff-error"]
    assert seen == [{"n": 1}]
    assert expired[0].error.retries == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("undecodable" in m and "dead-lettered or parked" in m for m in messages)
    assert any("RuntimeError('handler bug'); acked" in m for m in messages)
    assert any("retry #3 of 3 in 50 ms" in m for m in messages)


# -- nothing lost ---------------------------------------------------------------------

QUICK = FailurePolicy(max_transient_tries=3, first_pause_s=0.1, max_pause_s=1.0)
"""Transient failures: pauses of 0.1, 0.2 s, parked at the third try."""


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aio_backoff") and r.levelno >= logging.ERROR
    ]


async def test_a_copy_the_broker_refuses_is_parked_at_once(
    channel: AbstractChannel,
    declared: Any,
    service_name: str,
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
    new_service: ServiceFactory,
) -> None:
    """The delay exchange cannot be declared (it exists as another type): a
    permanent failure. The RPC request and the event are parked with the reason
    on their first try, with one ERROR line each; the caller gets an error reply
    (not the hot requeue loop of before, which ran the handler again and again)."""
    delay_exchange = declared.exchange(unique_name("delay"))
    await channel.declare_exchange(delay_exchange, aio_pika.ExchangeType.FANOUT)
    service = new_service(backoff=Fast, delay_exchange=delay_exchange)
    tries: list[str] = []

    @service.rpc
    async def work() -> None:
        tries.append("rpc")
        raise Backoff

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        tries.append("event")
        raise Backoff

    (queue,) = service.event_queues()
    caplog.set_level(logging.INFO, logger="aio_backoff")
    async with service:
        rpc_parking = await parked(channel, service.rpc_queue)
        event_parking = await parked(channel, queue)
        reply_queue = await request_with_replies(channel, service, "work")
        reply = json.loads((await get_one(reply_queue)).body)
        kept = [await get_one(rpc_parking)]
        # one at a time: a refused declare closes the publishing channel under a
        # park in flight on it, which then counts as a failed final action
        await service.dispatch("job", {})
        kept.append(await get_one(event_parking))
        assert await queue_depth(channel, service.rpc_queue) == 0
        assert await queue_depth(channel, queue) == 0
    assert sorted(tries) == ["event", "rpc"]
    assert reply["error"]["exc_type"] == "CopyNotPlaced"
    for message in kept:
        assert "copy not placed, permanent" in message.headers["backoff-error"]
    assert len(error_lines(caplog)) == 2


async def test_a_transient_failure_pauses_then_parks_at_the_try_limit(
    channel: AbstractChannel,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    new_service: ServiceFactory,
) -> None:
    """The channel the copy goes out on keeps closing: the message goes back to
    its queue after a pause that grows (0.1 s, then 0.2 s), and is parked at the
    third try; the RPC caller then gets an error reply."""
    service = new_service(backoff=Fast, failure_policy=QUICK)
    runs: dict[str, list[float]] = {"rpc": [], "event": []}
    loop = asyncio.get_running_loop()

    async def closed_channel(*args: Any, **kwargs: Any) -> None:
        msg = "channel closed"
        raise ChannelInvalidStateError(msg)

    monkeypatch.setattr(DelayedPublisher, "retry", closed_channel)

    @service.rpc
    async def work() -> None:
        runs["rpc"].append(loop.time())
        raise Backoff

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        runs["event"].append(loop.time())
        raise Backoff

    (queue,) = service.event_queues()
    caplog.set_level(logging.INFO, logger="aio_backoff")
    async with service:
        rpc_parking = await parked(channel, service.rpc_queue)
        event_parking = await parked(channel, queue)
        reply_queue = await request_with_replies(channel, service, "work")
        await service.dispatch("job", {})
        reply = json.loads((await get_one(reply_queue)).body)
        kept = [await get_one(rpc_parking), await get_one(event_parking)]
        assert await queue_depth(channel, service.rpc_queue) == 0
    for times in runs.values():
        assert len(times) == 3
        first, second = times[1] - times[0], times[2] - times[1]
        assert first >= 0.1
        assert second >= 0.2
    assert reply["error"]["exc_type"] == "ChannelInvalidStateError"
    for message in kept:
        assert "copy not placed, transient" in message.headers["backoff-error"]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aio_backoff") and r.levelno == logging.WARNING
    ]
    assert sum("try 1 of 3" in m for m in warnings) == 2
    assert sum("try 2 of 3" in m for m in warnings) == 2
    assert len(error_lines(caplog)) == 2


async def test_a_bad_backoff_schedule_is_parked_at_once(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """A planning error (the schedule raises ValueError) is not retried: the
    caller gets the error, the request is parked, the handler ran once."""

    class Broken(Backoff):
        limit = 3
        random_sigma = 0

        @classmethod
        def get_next_schedule_item(cls, index: int) -> float:
            msg = f"no delay configured for retry {index}"
            raise ValueError(msg)

    service = new_service()
    runs: list[int] = []

    @service.rpc(backoff=Broken)
    async def work() -> None:
        runs.append(1)
        raise Backoff

    async with service:
        parking = await parked(channel, service.rpc_queue)
        with pytest.raises(RemoteError, match="no delay configured"):
            await rpc.call(service_name, "work")
        kept = await get_one(parking)
    assert runs == [1]
    assert "planning error" in kept.headers["backoff-error"]


async def test_an_expiry_action_that_cannot_place_the_message_pauses_longer(
    channel: AbstractChannel,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """The parking queue exists and refuses every message (``x-max-length: 0``,
    ``reject-publish``), so parking fails: the message goes back to its queue after
    a pause that grows with each try (before, every 0.2 s for ever)."""
    service = new_service(backoff=Fast, failure_policy=QUICK)
    attempts: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()

    async def counting_park(message: ExpiredMessage) -> None:
        attempts.append((message.error.retries, loop.time()))
        await park(message)

    @service.event_handler(service_name, "job", on_expired=counting_park)
    async def on_job(payload: Any) -> None:
        raise Backoff

    (queue,) = service.event_queues()
    await channel.declare_queue(
        parking_queue_name(queue),
        durable=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    async with service:
        await service.dispatch("job", {})
        await wait_until(lambda: len(attempts) >= 3, what="three expiries")
    await wait_for_depth(channel, queue, 1)
    assert [retries for retries, _ in attempts[:3]] == [3, 3, 3]
    times = [at for _, at in attempts]
    assert times[1] - times[0] >= 0.1
    assert times[2] - times[1] >= 0.2


async def test_a_failing_expiry_callback_falls_back_to_parking(
    channel: AbstractChannel,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """A user's on_expired that raises does not leave the message unacked: it is
    parked (the queue has no dead-letter exchange), as a Retrier would do."""
    service = new_service(backoff=Fast)
    calls: list[int] = []

    async def broken_callback(message: ExpiredMessage) -> None:
        calls.append(message.error.retries)
        raise RuntimeError("callback bug")

    @service.event_handler(service_name, "job", on_expired=broken_callback)
    async def on_job(payload: Any) -> None:
        raise Backoff

    async with service:
        await service.dispatch("job", {"n": 1})
        (queue,) = service.event_queues()
        await wait_until(lambda: bool(calls))
        parked = await channel.declare_queue(parking_queue_name(queue), durable=True)
        for _ in range(50):  # the fallback parks it right after the callback raised
            message = await parked.get(fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.1)
        assert message is not None
    assert calls == [3]
    assert json.loads(message.body) == {"n": 1}
    assert message.headers["backoff-queue"] == queue
    await message.ack()
    assert await queue_depth(channel, queue) == 0


async def test_a_request_without_reply_to_is_handled_and_acked(
    channel: AbstractChannel,
    caplog: pytest.LogCaptureFixture,
    new_service: ServiceFactory,
) -> None:
    service = new_service()
    done = asyncio.Event()

    @service.rpc
    async def fire_and_forget() -> None:
        done.set()

    async with service:
        await send_request(channel, service, "fire_and_forget")
        await asyncio.wait_for(done.wait(), 5)
        await wait_until(
            lambda: any("has no reply_to" in r.getMessage() for r in caplog.records)
        )
    # stopped: nothing in flight; the request was acked, not handed back
    assert await queue_depth(channel, service.rpc_queue) == 0


# -- lifecycle -------------------------------------------------------------------------


async def test_stop_lets_handlers_in_flight_finish(
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    service = new_service()
    entered, release = asyncio.Event(), asyncio.Event()

    @service.rpc
    async def slow() -> str:
        entered.set()
        await release.wait()
        return "finished"

    await service.start()
    await service.start()  # idempotent
    call = asyncio.create_task(rpc.call(service_name, "slow"))
    await entered.wait()
    stopping = asyncio.create_task(service.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    release.set()
    await stopping
    assert await call == "finished"
    await service.stop()  # idempotent


async def test_stop_cancels_handlers_after_the_timeout_and_nothing_is_lost(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    service = new_service(shutdown_timeout=0.1)
    entered = asyncio.Event()
    cancelled: list[bool] = []

    @service.rpc
    async def stuck() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async with service:
        call = asyncio.create_task(rpc.call(service_name, "stuck"))
        await entered.wait()
    assert cancelled == [True]
    await wait_for_depth(channel, service.rpc_queue, 1)  # back for a retry
    call.cancel()


def handed_back(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if "back on its queue now" in r.getMessage()
    ]


async def test_a_stopping_service_hands_new_messages_back(
    channel: AbstractChannel,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
    new_service: ServiceFactory,
) -> None:
    service = new_service()
    ran: list[str] = []

    @service.rpc
    async def work() -> None:
        ran.append("rpc")

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        ran.append("event")

    (queue,) = service.event_queues()
    caplog.set_level(logging.INFO, logger="aio_backoff")
    async with service:
        service._consumer.stopping = True  # as between cancelling consumers and closing
        await send_request(channel, service, "work")
        await service.dispatch("job", {})
        await wait_until(
            lambda: len(handed_back(caplog)) >= 2, what="messages handed back"
        )
    await wait_for_depth(channel, service.rpc_queue, 1)
    await wait_for_depth(channel, queue, 1)
    assert ran == []


async def test_start_failure_closes_what_was_opened(
    connection: AbstractRobustConnection,
    declared: Any,
    service_name: str,
    unique_name: Callable[[str], str],
) -> None:
    exchange = declared.exchange(unique_name("rpcx"))
    channel = await connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.FANOUT)
    service = NamekoService(connection, service_name, rpc_exchange=exchange)

    @service.rpc
    async def work() -> None:
        pass

    with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
        await service.start()
    await service.stop()  # nothing left to stop


def _close_connection_by_name(name: str) -> bool:
    """Close a client connection through the management API; False if not listed."""
    api = urllib.parse.urlsplit(brokers.current().api_url)
    base = f"{api.scheme}://{api.hostname}:{api.port}"
    token = base64.b64encode(f"{api.username}:{api.password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    request = urllib.request.Request(f"{base}/api/connections", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        connections = json.load(response)
    for connection in connections:
        if connection.get("client_properties", {}).get("connection_name") == name:
            quoted = urllib.parse.quote(connection["name"], safe="")
            delete = urllib.request.Request(
                f"{base}/api/connections/{quoted}", headers=headers, method="DELETE"
            )
            urllib.request.urlopen(delete, timeout=5).close()
            return True
    return False


@pytest.mark.timeout(45)
async def test_reconnects_and_the_interrupted_call_is_answered(
    connection: AbstractRobustConnection,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """The broker drops the service's connection while a handler runs: that
    delivery cannot be settled any more (the handler is cancelled with its channel,
    or its ack fails and is logged), the broker redelivers the request once the
    robust connection is back, and the caller gets its answer."""
    name = f"interop-reconnect-{uuid.uuid4().hex[:8]}"
    service_connection = await aio_pika.connect_robust(
        brokers.current().amqp_url,
        client_properties={"connection_name": name},
        reconnect_interval=0.2,
    )
    service = new_service(connection=service_connection)
    entered, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    @service.rpc
    async def work() -> int:
        runs.append(len(runs))
        if len(runs) == 1:
            entered.set()
            await release.wait()
        return len(runs)

    try:
        async with service:
            call = asyncio.create_task(rpc.call(service_name, "work"))
            await entered.wait()
            for _ in range(100):
                if await asyncio.to_thread(_close_connection_by_name, name):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"connection {name!r} never appeared in the management API")
            await asyncio.sleep(0.3)
            release.set()
            # at least once: whichever run replies first answers the call
            assert await call >= 1
            await wait_until(lambda: len(runs) >= 2, what="the redelivery")
    finally:
        await service_connection.close()


async def test_a_delivery_that_cannot_be_settled_is_logged(
    service_name: str,
    caplog: pytest.LogCaptureFixture,
    new_service: ServiceFactory,
) -> None:
    """Its channel went away while the handler ran: the broker redelivers the
    message; the service logs that it could not settle it and carries on."""
    service = new_service()
    done = asyncio.Event()

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        assert service._consumer.channel is not None
        await service._consumer.channel.close()  # as if the broker closed it
        done.set()

    async with service:
        await service.dispatch("job", {})
        await asyncio.wait_for(done.wait(), 5)
        await wait_until(
            lambda: any(
                "could not settle" in r.getMessage()
                for r in caplog.records
                if r.name.startswith("aio_backoff")
            )
        )


async def test_a_closed_reply_channel_is_opened_again(
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    service = new_service()
    runs: list[int] = []

    @service.rpc
    async def work() -> int:
        runs.append(len(runs))
        channel = service._replies.channel
        assert channel is not None
        await channel.close()  # the reply channel is gone
        return len(runs)

    async with service:
        assert await rpc.call(service_name, "work") == 1
        assert await rpc.call(service_name, "work") == 2
    assert runs == [0, 1]


async def test_a_reply_that_cannot_be_sent_puts_the_request_back_then_parks_it(
    channel: AbstractChannel,
    monkeypatch: pytest.MonkeyPatch,
    new_service: ServiceFactory,
) -> None:
    """A reply that cannot be published is a transient failure of its request:
    back on the queue after a pause, parked at the try limit (not a loop)."""
    service = new_service(failure_policy=QUICK)
    runs: list[int] = []

    async def no_channel() -> None:
        msg = "no channel for replies"
        raise ChannelInvalidStateError(msg)

    @service.rpc
    async def work() -> int:
        runs.append(len(runs))
        return len(runs)

    async with service:
        monkeypatch.setattr(service._replies, "start", no_channel)
        parking = await parked(channel, service.rpc_queue)
        await send_request(channel, service, "work", reply_to="someone")
        kept = await get_one(parking)
    assert runs == [0, 1, 2]
    assert "could not be published" in kept.headers["backoff-error"]


async def test_a_reply_without_a_confirm_in_time_puts_the_request_back(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    monkeypatch: pytest.MonkeyPatch,
    new_service: ServiceFactory,
) -> None:
    """The broker's confirm of a reply does not come (dropped at the aiormq
    layer): after ``confirm_timeout`` the reply counts as not sent, a transient
    failure, and the request goes back to its queue after a pause instead of
    holding its worker for ever. The second run's reply is confirmed."""
    service = new_service(failure_policy=QUICK, confirm_timeout=0.3)
    runs: list[int] = []

    @service.rpc
    async def work() -> int:
        runs.append(len(runs))
        return len(runs)

    async with service:
        assert service._replies.channel is not None
        replies = await service._replies.channel.get_underlay_channel()
        confirm = replies._on_confirm_frame
        dropped: list[Any] = []

        async def drop_the_first(frame: Any) -> None:
            if not dropped:
                dropped.append(frame)
                return
            await confirm(frame)

        monkeypatch.setattr(replies, "_on_confirm_frame", drop_the_first)
        await rpc.call(service_name, "work")  # answered by the first run's reply
        await wait_until(lambda: len(runs) == 2, what="the request back")
        await wait_for_depth(channel, service.rpc_queue, 0)
    assert len(dropped) == 1
    assert runs == [0, 1]


async def test_an_expiry_further_down_is_relayed_as_nameko_relays_it(
    connection: AbstractRobustConnection,
    rpc: NamekoRpcClient,
    nameko_side: NamekoSide,
    declared: Any,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """An asyncio method calls a nameko method that expires and lets the error
    out: its caller gets a RemoteError naming the Expired, not an Expired of its
    own (the outer method did not back off)."""
    service = new_service()

    @service.rpc
    async def relay(job: dict[str, Any]) -> Any:
        async with NamekoRpcClient(connection, timeout=10) as inner:
            declared.queue(inner.reply_queue)
            return await inner.call(nameko_side.service, "work", job)

    async with service:
        with pytest.raises(RemoteError) as caught:
            await rpc.call(service_name, "relay", new_job(99, "relayed"))
    assert not isinstance(caught.value, Backoff.Expired)
    assert caught.value.exc_type == "RemoteError"
    assert caught.value.value.startswith("Expired Backoff aborted after '3' retries")


async def test_a_call_the_broker_refuses_raises_its_error(
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    unique_name: Callable[[str], str],
    declared: Any,
) -> None:
    """The RPC exchange vanished under a running client: the call fails with the
    broker's error instead of waiting for a reply that cannot come."""
    exchange = declared.exchange(unique_name("rpcx"))
    # not robust: a robust channel that the broker closed would come back and
    # declare the reply queue again after the test deleted it
    plain = await aio_pika.connect(brokers.current().amqp_url, timeout=10)
    try:
        async with NamekoRpcClient(plain, rpc_exchange=exchange) as client:
            declared.queue(client.reply_queue)
            await channel.exchange_delete(exchange)
            with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
                await client.call("anyone", "anything")
    finally:
        await plain.close()


# -- hostile input -------------------------------------------------------------------

UNDECODABLE = [
    b'{"args": [{"__type__": "decimal", "__value__": "xyz"}], "kwargs": {}}',
    b'{"args": [{"__type__": "bytes", "__value__": 5}], "kwargs": {}}',
    b'{"args": [{"__type__": "uuid", "__value__": 5}], "kwargs": {}}',
    b'{"args": [{"__type__": "date", "__value__": 5}], "kwargs": {}}',
    b"[" * 100_000,
    b'\xff\xfe{"args": [], "kwargs": {}}',
    b"not json",
    b'{"args": {}, "kwargs": {}}',
    b"[1, 2]",
    b"null",
    b'"text"',
]
"""Bodies nameko's serializer cannot decode, or whose shape is not a request."""


async def test_undecodable_requests_are_answered_and_parked_without_stalling(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """Eleven undecodable requests (more than max_workers) each get a
    MalformedRequest reply and are parked with the reason; the service still
    answers a good call after them (before, each one stayed unacked for good)."""
    service = new_service(max_workers=10)

    @service.rpc
    async def echo(value: Any = None) -> Any:
        return value

    async with service:
        parking = await parked(channel, service.rpc_queue)
        replies = [
            await request_with_replies(channel, service, "echo", body)
            for body in UNDECODABLE
        ]
        for reply_queue in replies:
            error = json.loads((await get_one(reply_queue)).body)["error"]
            assert error["exc_path"] == "nameko.exceptions.MalformedRequest"
        await wait_for_depth(channel, parking.name, len(UNDECODABLE))
        assert await rpc.call(service_name, "echo", 7) == 7
        assert await queue_depth(channel, service.rpc_queue) == 0
        kept = await get_one(parking)
    assert kept.body == UNDECODABLE[0]
    assert "undecodable" in kept.headers["backoff-error"]
    assert kept.headers["backoff-queue"] == service.rpc_queue


async def test_undecodable_events_are_parked_or_dead_lettered(
    channel: AbstractChannel,
    declared: Any,
    service_name: str,
    unique_name: Callable[[str], str],
    new_service: ServiceFactory,
) -> None:
    """Without a dead-letter exchange an undecodable event is parked; with one
    (``queue_arguments``) it is rejected to it. The handler never runs."""
    dlx = declared.exchange(unique_name("dlx"))
    await channel.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT)
    dead = await channel.declare_queue(
        declared.queue(unique_name("dead")), durable=True, robust=False
    )
    await dead.bind(dlx)
    plain = new_service()
    with_dlx = new_service(
        name=f"{service_name}_dlx", queue_arguments={"x-dead-letter-exchange": dlx}
    )
    ran: list[Any] = []

    async def on_job(payload: Any) -> None:
        ran.append(payload)

    plain.event_handler(service_name, "job")(on_job)
    with_dlx.event_handler(service_name, "job", name="on_job_dlx")(on_job)
    async with plain, with_dlx:
        parking = await parked(channel, plain.event_queues()[0])
        exchange = await channel.get_exchange(f"{service_name}.events")
        bodies = UNDECODABLE[:6]
        for body in bodies:
            await exchange.publish(aio_pika.Message(body), routing_key="job")
        await wait_for_depth(channel, parking.name, len(bodies))
        await wait_for_depth(channel, dead.name, len(bodies))
        for queue in (*plain.event_queues(), *with_dlx.event_queues()):
            assert await queue_depth(channel, queue) == 0
    assert ran == []


async def test_a_missing_dead_letter_exchange_parks_instead(
    channel: AbstractChannel,
    declared: Any,
    service_name: str,
    unique_name: Callable[[str], str],
    new_service: ServiceFactory,
) -> None:
    """The queue names a dead-letter exchange that does not exist: rejecting to it
    would drop the message, so it is parked (with the reason), as a Retrier does."""
    missing = unique_name("no-such-dlx")
    service = new_service(queue_arguments={"x-dead-letter-exchange": missing})
    ran: list[Any] = []

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        ran.append(payload)

    async with service:
        (queue,) = service.event_queues()
        parking = await parked(channel, queue)
        declared.queue(parking.name)
        exchange = await channel.get_exchange(f"{service_name}.events")
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key="job")
        kept = await get_one(parking)
        assert await queue_depth(channel, queue) == 0
    assert kept.body == b"{not json"
    assert "undecodable" in kept.headers["backoff-error"]
    assert ran == []


# -- the method id ---------------------------------------------------------------------


async def test_a_fresh_request_is_routed_by_its_routing_key(
    channel: AbstractChannel,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """A request that did not come back through the delay topology is not trusted
    with ``nameko.rpc_method_id`` (a nameko service that handled a retried request
    sends it on with its onward calls); a delayed copy is."""
    service = new_service()
    ran: list[str] = []

    @service.rpc
    async def work() -> str:
        ran.append("work")
        return "work"

    @service.rpc
    async def other() -> str:
        ran.append("other")
        return "other"

    async with service:
        replies = await channel.declare_queue(exclusive=True)
        await replies.bind("nameko-rpc", routing_key=replies.name)
        forged = {RPC_METHOD_ID_HEADER: f"{service_name}.other"}
        await send_request(
            channel, service, "work", headers=forged, reply_to=replies.name
        )
        first = json.loads((await get_one(replies)).body)
        await send_copy(channel, service, "other", reply_to=replies.name)
        second = json.loads((await get_one(replies)).body)
    assert first == {"result": "work", "error": None}
    assert second == {"result": "other", "error": None}
    assert ran == ["work", "other"]


@pytest.mark.parametrize("raised", ["RemoteExpired", "Expired"])
async def test_an_expired_upstream_call_is_not_retried_again(
    raised: str,
    rpc: NamekoRpcClient,
    service_name: str,
    new_service: ServiceFactory,
) -> None:
    """Finding 6: with ``retry_for=(Exception,)`` an upstream ``RemoteExpired`` (or
    any ``Backoff.Expired``) is not turned into a new Backoff: the caller gets
    the error at once and the method runs once (needs the change of
    ``as_backoff`` that comes with nameko_bridge's fix)."""
    service = new_service(backoff=Fast, retry_for=(Exception,))
    runs: list[int] = []

    @service.rpc
    async def relay() -> None:
        runs.append(1)
        if raised == "RemoteExpired":
            raise RemoteExpired("Expired", "Backoff aborted after '3' retries (~0s)")
        raise Backoff.Expired("Backoff aborted after '3' retries (~0s)")

    async with service:
        with pytest.raises(RemoteError):
            await rpc.call(service_name, "relay")
    assert runs == [1]


# -- graceful stop ---------------------------------------------------------------------


async def test_stop_hands_back_a_message_waiting_out_its_pause(
    channel: AbstractChannel,
    service_name: str,
    monkeypatch: pytest.MonkeyPatch,
    new_service: ServiceFactory,
) -> None:
    """A message waiting out a long pause (a transient failure) goes back to its
    queue as soon as the service stops; stop does not wait for the pause."""
    slow = FailurePolicy(max_transient_tries=5, first_pause_s=30, max_pause_s=30)
    service = new_service(backoff=Fast, failure_policy=slow, shutdown_timeout=20)
    ran: list[int] = []

    async def closed_channel(*args: Any, **kwargs: Any) -> None:
        msg = "channel closed"
        raise ChannelInvalidStateError(msg)

    monkeypatch.setattr(DelayedPublisher, "retry", closed_channel)

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        ran.append(1)
        raise Backoff

    loop = asyncio.get_running_loop()
    await service.start()
    try:
        await service.dispatch("job", {})
        await wait_until(lambda: bool(ran), what="the handler")
        started = loop.time()
    finally:
        await service.stop()
    assert loop.time() - started < 5
    (queue,) = service.event_queues()
    await wait_for_depth(channel, queue, 1)
    assert ran == [1]


async def test_no_handler_runs_while_the_publisher_cannot_publish(
    service_name: str, new_service: ServiceFactory
) -> None:
    """As for a Retrier: once a delayed copy cannot go at all (the publisher's
    connection is down), no event handler starts until a probe reaches the broker
    again; then every event is handled."""
    service = new_service(
        backoff=Fast,
        failure_policy=FailurePolicy(
            max_transient_tries=0, first_pause_s=0.05, max_pause_s=0.2
        ),
    )
    started_while_closed: list[bool] = []
    handled: list[int] = []

    @service.event_handler(service_name, "job")
    async def on_job(payload: Any) -> None:
        publisher = service._publisher
        assert publisher is not None
        started_while_closed.append(not publisher.available)
        call = current_call()
        assert call is not None
        if call.retries < 1:
            raise Backoff
        handled.append(payload["n"])

    async with service:
        publisher = service._publisher
        assert publisher is not None
        good = await publisher.connection._url()
        await publisher.connection.close()
        publisher.connection.url = "amqp://guest:guest@127.0.0.1:1/"  # no broker
        for n in range(5):
            await service.dispatch("job", {"n": n})
        await wait_until(lambda: not publisher.available, what="the gate to close")
        publisher.connection.url = good
        await wait_until(lambda: len(handled) == 5, what="every event handled")
    assert sorted(handled) == [0, 1, 2, 3, 4]
    assert not any(started_while_closed), "a handler ran while the gate was closed"
