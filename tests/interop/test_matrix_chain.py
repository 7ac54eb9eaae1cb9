"""A retried RPC method that calls another service, across stacks (finding 1).

The chain method backs off once; on its retried delivery it calls ``work`` of a
downstream service. The retried request carries ``nameko.rpc_method_id`` (it came
back through the delay queue), and nameko copies every ``nameko.*`` header of a
request into the worker context, so a nameko service's onward call carries it as
well. The downstream service must route that call by its routing key, never by the
header: else it answers ``MethodNotFound: chain``.

Cells: the retried method on nameko_bridge or asyncio x the downstream service on
nameko_bridge or asyncio. A cell whose downstream service is nameko_bridge needs
the receiver check in ``nameko_bridge.rpc``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import NamekoRpcClient, NamekoService, current_call
from tests import brokers
from tests.aio_fixtures import with_parking_queues
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import AioSide, Fast, new_job
from tests.interop.processes import (
    NamekoProcess,
    Report,
    delete_queues,
    queues_named,
    wait_for_consumers,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def nameko_chain(
    tmp_path_factory: pytest.TempPathFactory,
    interop_prefix: str,
    nameko_side: NamekoSide,
) -> Iterator[str]:
    """``ChainService`` of ``services/nameko_services.py`` under ``nameko run``."""
    url = brokers.current().amqp_url
    directory = tmp_path_factory.mktemp("chain")
    process = NamekoProcess.interop(
        "ChainService",
        amqp_url=url,
        prefix=interop_prefix,
        report=Report(directory / "report.jsonl").path,
        log_path=directory / "service.log",
    )
    name = f"{interop_prefix}_chain_nameko_bridge"
    try:
        asyncio.run(wait_for_consumers(url, [f"rpc-{name}"]))
        yield name
    finally:
        process.stop()
        replies = queues_named(url, brokers.current().api_url, f"rpc.reply-{name}-")
        queues = [*with_parking_queues([f"rpc-{name}"]), *replies]
        asyncio.run(delete_queues(url, queues))


@pytest.fixture
async def asyncio_services(
    connection: AbstractRobustConnection, declared: Any, interop_prefix: str
) -> AsyncIterator[tuple[str, AioSide]]:
    """The asyncio chain service and the asyncio downstream service."""
    downstream_side = AioSide()
    downstream = NamekoService(connection, f"{interop_prefix}_aio_down")
    downstream.rpc(name="work")(downstream_side.work)
    chain = NamekoService(connection, f"{interop_prefix}_chain_asyncio", backoff=Fast)
    targets = {"nameko": f"{interop_prefix}_nameko", "asyncio": downstream.name}

    @chain.rpc(name="chain")
    async def chain_method(job: dict[str, Any], target: str) -> Any:
        call = current_call()
        assert call is not None
        if call.retries < 1:
            raise Fast
        async with NamekoRpcClient(connection, timeout=20) as onward:
            declared.queue(onward.reply_queue)
            down = await onward.call(targets[target], "work", job)
        return {"retries": call.retries, "down": down}

    for service in (downstream, chain):
        declared.queue(service.rpc_queue)
        declared.queue(f"{service.rpc_queue}.parked")
    async with downstream, chain:
        yield chain.name, downstream_side


@pytest.mark.parametrize("downstream", ["nameko", "asyncio"])
@pytest.mark.parametrize("retried", ["nameko", "asyncio"])
async def test_a_retried_method_calls_another_service(
    retried: str,
    downstream: str,
    nameko_chain: str,
    asyncio_services: tuple[str, AioSide],
    connection: AbstractRobustConnection,
    declared: Any,
) -> None:
    chain = nameko_chain if retried == "nameko" else asyncio_services[0]
    job = new_job(0, f"chain-{retried}-{downstream}")
    async with NamekoRpcClient(connection, timeout=30) as client:
        declared.queue(client.reply_queue)
        result = await client.call(chain, "chain", job, downstream)
    side = "nameko_bridge" if downstream == "nameko" else "asyncio"
    assert result == {
        "retries": 1,
        "down": {"key": job["key"], "retries": 0, "side": side},
    }
