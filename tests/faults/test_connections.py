"""Connections are closed under a stream of retries; then the delay exchange is
deleted under one (issue 7, finding 4)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.faults.harness import publish, start_consumer, wait_for
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

MESSAGES = 400
RUNS = MESSAGES * 4
FAULTS = 5


async def test_connections_closed_during_a_stream_of_retries(
    connection: AbstractRobustConnection,
    fault_node: FaultNode,
    ledger,
    unique,
) -> None:
    book = ledger(f"all connections closed {FAULTS} times during retries")
    queue = unique("jobs")
    consumer = await start_consumer(
        connection, queue, book, fail_runs=3, prefetch=5, work_s=0.02
    )
    unfinished = []
    await publish(connection, queue, book.new_ids(MESSAGES))
    for fault in range(1, FAULTS + 1):
        # spread the faults over the stream of handler runs (four per message)
        runs = fault * RUNS // (FAULTS + 1)
        await wait_for(lambda: book.run_count() >= runs, 30, f"{runs} runs")  # noqa: B023
        unfinished.append(MESSAGES - len(book.successes))
        await fault_node.close_all_connections()
    await book.wait_settled(60)
    await consumer.close()
    assert all(unfinished), f"faults hit the stream (unfinished ids: {unfinished})"
    book.assert_all_kept()


async def test_delay_exchange_deleted_during_a_stream_of_retries(
    fault_node: FaultNode, ledger, unique
) -> None:
    """Finding 4: with ~20 confirmed publishes in flight to a missing exchange the
    broker closes the whole connection (504 CHANNEL_ERROR), not just the channel.
    The consumer is on a plain connection (no reconnect): it must keep consuming."""
    book = ledger(f"delay exchange deleted {FAULTS} times during retries")
    queue = unique("jobs")
    exchange = unique("delay")
    connection = await aio_pika.connect(fault_node.amqp_url, timeout=10)
    sender = await aio_pika.connect(fault_node.amqp_url, timeout=10)
    dropped: list[BaseException | None] = []

    def on_close(_: object, error: BaseException | None) -> None:
        dropped.append(error)

    connection.close_callbacks.add(on_close)
    try:
        consumer = await start_consumer(
            connection, queue, book, fail_runs=2, prefetch=100, exchange=exchange
        )
        ids = book.new_ids(MESSAGES)
        await publish(connection, queue, ids[:100])  # the exchange is declared
        await book.wait_successes(100, 15)
        publishing = asyncio.create_task(publish(sender, queue, ids[100:]))
        for _ in range(FAULTS):
            await fault_node.delete_exchange(exchange)
            await asyncio.sleep(0.3)
        await publishing
        await book.wait_settled(30, hopeless=lambda: bool(dropped))
        await fault_node.delete_exchange(exchange)
        if not dropped:
            await consumer.close()
    finally:
        connection.close_callbacks.discard(on_close)  # our own close is no drop
        await connection.close()
        await sender.close()
    assert not dropped, f"the broker closed the consumer's connection: {dropped[0]!r}"
    book.assert_all_kept()
