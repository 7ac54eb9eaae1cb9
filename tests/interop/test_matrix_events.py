"""Events across stacks: a dispatcher on either stack x a handler on either stack.

Each case dispatches one event that backs off twice and then succeeds, and one that
expires at the limit; a backed-off event comes back to its handler's own queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from aio_backoff import EventDispatcher, NamekoService, parking_queue_name
from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import (
    AioSide,
    Fast,
    check_ok_and_doomed,
    ok_and_doomed,
    ok_and_doomed_done,
)
from tests.interop.processes import nameko_client
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(45)]


@pytest.mark.parametrize("handler", ["asyncio", "nameko"])
@pytest.mark.parametrize("dispatcher", ["asyncio", "nameko"])
async def test_event_backs_off_then_succeeds_or_expires(
    dispatcher: str,
    handler: str,
    nameko_side: NamekoSide,
    connection: AbstractRobustConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    ok, doomed = ok_and_doomed()
    aio = AioSide()
    service = NamekoService(connection, unique_name("aiosvc").replace(".", "_"))
    if handler == "nameko":
        source, event_type = nameko_side.event_source, "job_for_nameko"
        records = nameko_side.report.for_key
    else:
        source, event_type = unique_name("src").replace(".", "_"), "job"
        records = aio.for_key
        service.event_handler(
            source, event_type, name="on_job", backoff=Fast, on_expired=aio.on_expired
        )(aio.work)
        for queue in service.event_queues():
            declared.queue(queue)
            declared.queue(parking_queue_name(queue))
        declared.exchange(f"{source}.events")

    async with service:
        if dispatcher == "asyncio":
            async with EventDispatcher(connection) as dispatch:
                await asyncio.gather(
                    dispatch(source, event_type, ok),
                    dispatch(source, event_type, doomed),
                )
        else:
            await nameko_client(
                brokers.current().amqp_url,
                [
                    ["dispatch", source, event_type, ok],
                    ["dispatch", source, event_type, doomed],
                ],
            )
        await wait_until(
            ok_and_doomed_done(records, ok, doomed), what="the events to be handled"
        )

    check_ok_and_doomed(records, ok, doomed, nameko_handled=handler == "nameko")

    if handler == "asyncio":
        # the expired event is parked, not dropped
        (queue,) = service.event_queues()
        parked = await channel.declare_queue(parking_queue_name(queue), passive=True)
        assert parked.declaration_result.message_count == 1
