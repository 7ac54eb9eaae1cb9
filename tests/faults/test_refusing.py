"""The delay queue refuses copies for a while (a max-length 0, reject-publish policy
on the fault node): no hot loop, and every message is handled or kept."""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import Backoff, delay_queue_name
from tests.faults.harness import publish, start_consumer
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

MESSAGES = 20
REFUSING_S = 4.0


class Refused(Backoff):
    schedule = (25,)
    limit = 3
    random_sigma = 0


async def test_delay_queue_refusing_copies(
    connection: AbstractRobustConnection, fault_node: FaultNode, ledger, unique
) -> None:
    """Issue 7, finding 2: while the delay queue refuses, the original used to go
    straight back (1,500 redeliveries a second); on a 4.x quorum queue the delivery
    limit (20) then dropped it. The target is a quorum queue on 4.x."""
    book = ledger(f"delay queue refusing copies for {REFUSING_S:.0f} s")
    queue = unique("jobs")
    policy = unique("refuse")
    arguments = {"x-queue-type": "quorum"} if fault_node.version != "3" else {}
    await fault_node.set_policy(
        policy,
        f"^{delay_queue_name(25)}$",
        {"max-length": 0, "overflow": "reject-publish"},
    )
    try:
        consumer = await start_consumer(
            connection,
            queue,
            book,
            backoff=Refused,
            until_delayed=True,
            queue_arguments=arguments,
        )
        await publish(connection, queue, book.new_ids(MESSAGES))
        await asyncio.sleep(REFUSING_S)  # the fault lasts this long
    finally:
        await fault_node.clear_policy(policy)
    await book.wait_settled(30)
    await consumer.close()
    book.assert_all_kept()
