"""The asyncio nameko protocol: undecodable request bodies (finding 5) and a retried
RPC method that calls another service (finding 1)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import Backoff, NamekoRpcClient, NamekoService
from aio_backoff.core.nameko_wire import RPC_EXCHANGE, rpc_routing_key
from tests.faults.harness import Quick
from tests.faults.ledger import correlation_id_of
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

UNDECODABLE = {
    "decimal holding 'xyz'": b'{"args": [{"__type__": "decimal", "__value__": "xyz"}],'
    b' "kwargs": {}}',
    "bytes holding an int": b'{"args": [{"__type__": "bytes", "__value__": 5}],'
    b' "kwargs": {}}',
    "uuid holding an int": b'{"args": [{"__type__": "uuid", "__value__": 5}],'
    b' "kwargs": {}}',
    "[ x 100000": b"[" * 100_000,
}
COPIES_EACH = 3  # 12 of them: more than max_workers (10)


@pytest.fixture
async def service_names(
    unique: Callable[[str], str], fault_node: FaultNode
) -> AsyncIterator[Callable[[str], str]]:
    """``service_names("a")``: a unique service name; its queues are deleted after."""
    made: list[str] = []

    def make(label: str) -> str:
        name = unique(label).replace(".", "_")
        made.append(name)
        return name

    yield make
    for name in made:
        for queue in (f"rpc-{name}", f"rpc-{name}.parked"):
            await fault_node.delete_queue(queue)


async def test_undecodable_request_bodies_are_settled(
    connection: AbstractRobustConnection,
    fault_node: FaultNode,
    ledger,
    service_names,
) -> None:
    """Every undecodable body is dead-lettered or parked, and the service still
    answers afterwards (ten unsettled ones used to stall it for good)."""
    book = ledger(f"undecodable nameko bodies ({len(UNDECODABLE)} kinds), then a call")
    name = service_names("svc")
    book.watch(f"rpc-{name}.parked", correlation_id_of)
    service = NamekoService(connection, name, max_workers=10)

    @service.rpc
    async def work(key: str) -> str:
        book.ran(key)
        book.succeeded(key)
        return key

    async with service, NamekoRpcClient(connection, timeout=10) as caller:
        channel = await connection.channel()
        exchange = await channel.get_exchange(RPC_EXCHANGE)
        for kind, body in UNDECODABLE.items():
            for key in book.new_ids(COPIES_EACH, kind.replace(" ", "_")):
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        correlation_id=key,
                        reply_to=caller.reply_id,
                        content_type="application/json",
                    ),
                    routing_key=rpc_routing_key(name, "work"),
                )
        await channel.close()
        (call,) = book.new_ids(1, "call")
        with contextlib.suppress(Exception):  # a timeout shows as lost
            await caller.call(name, "work", call)
        await book.wait_settled(15)
    book.assert_all_kept()


async def test_retried_rpc_method_calls_another_service(
    connection: AbstractRobustConnection, ledger, service_names
) -> None:
    """Finding 1: the redelivered request carries ``nameko.rpc_method_id``, which
    travelled on to the onward call, and service B answered ``MethodNotFound: work``."""
    book = ledger("retried RPC method calls another service")
    upstream, downstream = service_names("a"), service_names("b")
    a = NamekoService(connection, upstream, backoff=Quick)
    b = NamekoService(connection, downstream)
    onward = NamekoRpcClient(connection, name=upstream, timeout=10)

    @a.rpc
    async def work(key: str) -> str:
        if book.ran(key) < 1:
            raise Backoff
        answer = await onward.call(downstream, "echo", key)
        book.succeeded(key)
        return str(answer)

    @b.rpc
    async def echo(key: str) -> str:
        return key

    ids = book.new_ids(20)
    async with b, a, onward, NamekoRpcClient(connection, timeout=15) as caller:
        answers = await asyncio.gather(
            *(caller.call(upstream, "work", key) for key in ids),
            return_exceptions=True,
        )
    wrong = [answer for key, answer in zip(ids, answers, strict=True) if answer != key]
    book.assert_all_kept()
    assert not wrong, f"{len(wrong)} calls failed, e.g. {wrong[0]!r}"
