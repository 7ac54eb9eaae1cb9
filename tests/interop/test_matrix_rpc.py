"""RPC across stacks: a caller on either stack x a service on either stack.

Each case sends one job that backs off twice and then succeeds, and one that expires
at the limit; the caller gets the result, or the ``Expired`` error, exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import NamekoRpcClient, NamekoService, RemoteExpired
from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import (
    DOOMED_ATTEMPTS,
    AioSide,
    Fast,
    check_ok_and_doomed,
    ok_and_doomed,
)
from tests.interop.processes import nameko_client
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(45)]

EXPIRED_TEXT = "Backoff aborted after '3' retries"


@pytest.fixture
async def aio_service(
    connection: AbstractRobustConnection,
    declared: Any,
    unique_name: Callable[[str], str],
) -> AsyncIterator[tuple[NamekoService, AioSide]]:
    side = AioSide()
    service = NamekoService(connection, unique_name("aiosvc").replace(".", "_"))
    service.rpc(name="work", backoff=Fast)(side.work)
    declared.queue(service.rpc_queue)
    declared.queue(f"{service.rpc_queue}.parked")  # where the expired request is kept
    async with service:
        yield service, side


async def call_from_asyncio(
    connection: AbstractRobustConnection, declared: Any, service: str, jobs: list[Any]
) -> list[dict[str, Any]]:
    async with NamekoRpcClient(connection, timeout=30) as rpc:
        declared.queue(rpc.reply_queue)
        outcomes = await asyncio.gather(
            *(rpc.call(service, "work", job) for job in jobs), return_exceptions=True
        )
    results: list[dict[str, Any]] = []
    for outcome in outcomes:
        if isinstance(outcome, RemoteExpired):
            results.append(
                {"error": {"exc_type": outcome.exc_type, "value": outcome.value}}
            )
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append({"result": outcome})
    return results


@pytest.mark.parametrize("handler", ["asyncio", "nameko"])
@pytest.mark.parametrize("caller", ["asyncio", "nameko"])
async def test_rpc_backs_off_then_succeeds_or_expires(
    caller: str,
    handler: str,
    nameko_side: NamekoSide,
    aio_service: tuple[NamekoService, AioSide],
    connection: AbstractRobustConnection,
    declared: Any,
) -> None:
    ok, doomed = ok_and_doomed()
    if handler == "nameko":
        service, side_name = nameko_side.service, "nameko_bridge"
        records = nameko_side.report.for_key
    else:
        service, side_name = aio_service[0].name, "asyncio"
        records = aio_service[1].for_key

    if caller == "asyncio":
        got_ok, got_doomed = await call_from_asyncio(
            connection, declared, service, [ok, doomed]
        )
    else:
        got_ok, got_doomed = await nameko_client(
            brokers.current().amqp_url,
            [
                ["rpc_async", service, "work", [ok], {}],
                ["rpc_async", service, "work", [doomed], {}],
            ],
        )

    assert got_ok == {"result": {"key": ok["key"], "retries": 2, "side": side_name}}
    assert got_doomed["error"]["exc_type"] == "Expired"
    assert EXPIRED_TEXT in got_doomed["error"]["value"]

    # the nameko side reports a worker after it replied: wait for the last one
    await wait_until(lambda: len(records(doomed["key"])) >= 4, what="doomed records")
    expected = (
        DOOMED_ATTEMPTS if handler == "nameko" else [*DOOMED_ATTEMPTS[:3], (3, "Fast")]
    )
    check_ok_and_doomed(
        records,
        ok,
        doomed,
        nameko_handled=handler == "nameko",
        doomed_attempts=expected,
    )

    # each retry is a new call whose parent is the backed-off one
    stacks = [r["call_id_stack"] for r in records(ok["key"])]
    stacks.sort(key=len)
    for earlier, later in itertools.pairwise(stacks):
        assert later[-2] == earlier[-1] + ".backoff"
        assert later[-2].startswith(f"{service}.work.")
