"""The deprecated keywords of the asyncio API still work, with a DeprecationWarning
that names ``delay_exchange``: one name for the delay exchange on every stack."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from aio_backoff import Backoff, BackoffRPC, DelayedPublisher, Retrier

pytestmark = [pytest.mark.broker, pytest.mark.timeout(20)]

# two retries through the exchange "retries", as nameko-amqp-retry counts them
LEGACY: Any = SimpleNamespace(
    headers={"x-death": [{"exchange": "retries", "count": 2, "queue": "q"}]}
)


def planned_exchange(publisher: DelayedPublisher) -> str:
    plan = publisher.plan(LEGACY, Backoff(), target_queue="q")
    assert plan.retry_number == 3  # the x-death of "retries" counted
    return plan.delay_queue.delay_exchange


async def test_delayed_publisher_exchange_keyword_warns_and_still_works(
    channel: AbstractChannel,
) -> None:
    with pytest.warns(DeprecationWarning, match=r"DelayedPublisher\(delay_exchange="):
        publisher = DelayedPublisher(channel, exchange="retries", topology="per-delay")
    try:
        assert publisher.delay_exchange == "retries"
        with pytest.warns(DeprecationWarning, match=r"Publisher\.delay_exchange"):
            assert publisher.exchange == "retries"
        assert planned_exchange(publisher) == "retries"
    finally:
        await publisher.close()


def retrier(channel: AbstractChannel) -> DelayedPublisher:
    return Retrier(channel, exchange="retries", topology="per-delay").publisher


def backoff_rpc(channel: AbstractChannel) -> DelayedPublisher:
    return BackoffRPC(
        channel, backoff_exchange="retries", topology="per-delay"
    ).publisher


@pytest.mark.parametrize(
    ("make", "new"),
    [
        (retrier, r"Retrier\(delay_exchange="),
        (backoff_rpc, r"BackoffRPC\(delay_exchange="),
    ],
)
async def test_a_servers_old_keyword_warns_and_still_works(
    channel: AbstractChannel,
    make: Callable[[AbstractChannel], DelayedPublisher],
    new: str,
) -> None:
    with pytest.warns(DeprecationWarning, match=new):
        publisher = make(channel)
    try:
        assert planned_exchange(publisher) == "retries"
    finally:
        await publisher.close()


async def test_rpc_client_exchange_keyword_warns_and_still_works(
    connection: AbstractRobustConnection,
) -> None:
    from aio_backoff import NamekoRpcClient  # noqa: PLC0415 - the nameko protocol

    with pytest.warns(DeprecationWarning, match=r"NamekoRpcClient\(rpc_exchange="):
        client = NamekoRpcClient(connection, exchange="other-rpc")
    assert client.rpc_exchange == "other-rpc"
    assert NamekoRpcClient(connection).rpc_exchange == "nameko-rpc"
