"""aio-pika fixtures for the asyncio test process (star-imported by its conftests).

Every test gets its own connection and unique names; what a test declares through
``declared`` is deleted afterwards (a queue with its ``{queue}.parked``), and the
shared delay queues expire by themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from aio_backoff import parking_queue_name
from tests import brokers

__all__ = ["channel", "connection", "declared", "drop_ladders", "unique_name"]


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` -> ``"test.<test name>.orders.<random>"``."""
    test = request.node.name.replace("[", ".").replace("]", "")[:60]

    def make(label: str = "q") -> str:
        return f"test.{test}.{label}.{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
async def connection() -> AsyncIterator[AbstractRobustConnection]:
    conn = await aio_pika.connect_robust(brokers.current().amqp_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def channel(connection: AbstractRobustConnection) -> AbstractChannel:
    return await connection.channel()


class Declared:
    """Remembers queues and exchanges a test made, and deletes them afterwards."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def ladder(self, ladder: Any) -> Any:
        """All of an ``aio_backoff.Ladder``'s queues and exchanges."""
        self.queues.extend(ladder.queue_names)
        self.exchanges.extend(ladder.level(level) for level in range(32))
        self.exchanges += [ladder.deliver_exchange, ladder.undeliverable]
        return ladder

    def with_parking_queues(self) -> list[str]:
        """The queues, each followed by its ``{queue}.parked``: expiry and failures
        park by default, so any queue a test consumed may have one."""
        return list(dict.fromkeys(with_parking_queues(self.queues)))


def with_parking_queues(queues: Iterable[str]) -> Iterator[str]:
    """Each of ``queues``, then its parking queue (unless it is one itself)."""
    for queue in queues:
        yield queue
        if not queue.endswith(".parked"):
            yield parking_queue_name(queue)


@pytest.fixture
async def declared(
    connection: AbstractRobustConnection,
) -> AsyncIterator[Declared]:
    names = Declared()
    yield names
    cleanup = await connection.channel()
    for queue in names.with_parking_queues():
        await cleanup.queue_delete(queue)
    for exchange in names.exchanges:
        await cleanup.exchange_delete(exchange)
    await cleanup.close()


async def drop_ladders(
    connection: AbstractRobustConnection, publishers: Iterable[Any]
) -> None:
    """Delete the ladders that ``publishers`` (``DelayedPublisher``) declared under a
    delay exchange of the test's own: the default ``backoff`` ladder is shared, but a
    ladder per test would leave 33 queues behind each time."""
    from aio_backoff import DEFAULT_DELAY_EXCHANGE, Ladder  # noqa: PLC0415

    ladders = {
        Ladder(publisher.delay_exchange, queue_type)
        for publisher in publishers
        if publisher.delay_exchange != DEFAULT_DELAY_EXCHANGE
        for queue_type in ("classic", "quorum")
    }
    if not ladders:
        return
    channel = await connection.channel()
    for ladder in ladders:
        for queue in ladder.queue_names:
            await channel.queue_delete(queue)
        for level in range(32):
            await channel.exchange_delete(ladder.level(level))
        await channel.exchange_delete(ladder.deliver_exchange)
        await channel.exchange_delete(ladder.undeliverable)
    await channel.close()
