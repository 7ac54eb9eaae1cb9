"""NamekoService (the asyncio nameko protocol) tells the same hooks."""

from __future__ import annotations

import logging

import pytest
from aio_pika.abc import AbstractChannel

from aio_backoff import Backoff, NamekoRpcClient, current_call
from aio_backoff.events import CameBack, Expired, Parked, Scheduled
from tests.interop.jobs import Fast
from tests.interop.test_nameko_service import (  # noqa: F401 - fixtures
    ServiceFactory,
    Unavailable,
    get_one,
    new_service,
    parked,
    rpc,
    service_name,
)
from tests.observability.recording import Events
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def test_a_nameko_service_tells_its_hooks(
    channel: AbstractChannel,
    rpc: NamekoRpcClient,  # noqa: F811
    service_name: str,  # noqa: F811
    new_service: ServiceFactory,  # noqa: F811
) -> None:
    events = Events()
    service = new_service(backoff=Fast, hooks=events.hooks())

    @service.rpc(retry_for=(Unavailable,))
    async def flaky() -> int:
        call = current_call()
        assert call is not None
        if call.retries < 2:
            raise Unavailable
        return call.retries

    @service.rpc(name="plain")
    async def plain_backoff() -> None:
        raise Backoff

    async with service:
        assert await rpc.call(service_name, "flaky") == 2
        with pytest.raises(Backoff.Expired):
            await rpc.call(service_name, "plain")
        await get_one(await parked(channel, service.rpc_queue))
        await wait_until(lambda: events.of(Parked), what="the parked event")
    scheduled = events.of(Scheduled)
    assert [e.exception_type for e in scheduled[:2]] == ["Unavailable"] * 2
    assert [e.attempt for e in scheduled] == [1, 2, 1, 2, 3]
    assert all(e.queue == service.rpc_queue for e in scheduled)
    back = events.of(CameBack)
    assert [e.attempt for e in back] == [1, 2, 1, 2, 3]
    assert all(e.lateness_ms is not None and e.lateness_ms >= 0 for e in back)
    [spent] = events.of(Expired)
    assert (spent.attempt, spent.limit) == (3, 3)


async def test_a_nameko_service_handler_error_line_has_structured_fields(
    rpc: NamekoRpcClient,  # noqa: F811
    service_name: str,  # noqa: F811
    new_service: ServiceFactory,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nameko's rule (a handler error is replied and acked) logs with the fields."""
    service = new_service(backoff=Fast)

    @service.rpc(name="broken")
    async def broken() -> None:
        msg = "no such order"
        raise KeyError(msg)

    with caplog.at_level(logging.INFO, logger="aio_backoff"):
        async with service:
            with pytest.raises(Exception, match="no such order"):
                await rpc.call(service_name, "broken")
    lines = [r for r in caplog.records if getattr(r, "backoff_queue", None)]
    assert lines, [r.getMessage() for r in caplog.records]
    assert lines[-1].backoff_queue == service.rpc_queue  # type: ignore[attr-defined]
    assert lines[-1].backoff_attempt == 0  # type: ignore[attr-defined]
