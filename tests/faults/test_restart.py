"""The broker restarts while 10,000 delayed copies wait in a delay queue."""

from __future__ import annotations

import time

import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import Backoff, delay_queue_name
from tests.faults.harness import depth, publish, start_consumer, wait_for
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

COPIES = 10_000
DELAY_MS = 45_000
"""Long enough that no copy expires before the restart begins, also when placing
the 10,000 copies is slow (a loaded machine, coverage): it must take less than this."""


class Waiting(Backoff):
    schedule = (DELAY_MS,)
    limit = 3
    random_sigma = 0


async def test_every_copy_comes_back_after_a_restart(
    connection: AbstractRobustConnection,
    fault_node: FaultNode,
    ledger,
    unique,
) -> None:
    book = ledger("broker restart, 10,000 copies waiting")
    queue = unique("orders")
    consumer = await start_consumer(
        connection, queue, book, backoff=Waiting, prefetch=200
    )
    started = time.monotonic()
    await publish(connection, queue, book.new_ids(COPIES))
    published = time.monotonic()

    async def all_waiting() -> bool:
        return await depth(connection, delay_queue_name(DELAY_MS)) == COPIES

    await wait_for(
        all_waiting,
        DELAY_MS / 1000 - 5,
        f"{COPIES} copies in {delay_queue_name(DELAY_MS)}",
    )
    placed = time.monotonic()
    await fault_node.restart()
    restarted = time.monotonic()
    await book.wait_settled(DELAY_MS / 1000 + 75)
    print(
        f"published in {published - started:.1f} s, copies placed after "
        f"{placed - started:.1f} s, restart took {restarted - placed:.1f} s, "
        f"settled after {time.monotonic() - started:.1f} s"
    )
    await consumer.close()
    book.assert_all_kept()
    assert book.row().succeeded == COPIES, f"all back to the handler: {book.describe()}"
