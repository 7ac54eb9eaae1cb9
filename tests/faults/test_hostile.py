"""Hostile headers: each message is handled or kept, never looped on, and the delay
queue it passes through stays up for everyone else (issue 7, findings 2 and 3)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import amqp
import pytest
from aio_pika.abc import AbstractRobustConnection

from aio_backoff import Backoff, backoff_class, delay_queue_name
from tests.faults.harness import publish, start_consumer
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

FOLLOWERS = 20


@pytest.mark.parametrize(
    ("label", "x_death", "delay_ms"),
    [
        ("['a', 'b']", ["a", "b"], 30),
        (
            "with count '5'",
            [
                {
                    "count": "5",
                    "reason": "expired",
                    "queue": "backoff--31ms",  # the queue it goes through
                    "exchange": "backoff",
                    "routing-keys": ["orders"],
                    "time": datetime.now(UTC).replace(microsecond=0),
                }
            ],
            31,
        ),
    ],
    ids=["list-of-strings", "text-count"],
)
async def test_malformed_x_death_keeps_the_delay_queue_up(
    connection: AbstractRobustConnection,
    fault_node: FaultNode,
    ledger,
    unique,
    label: str,
    x_death: list[Any],
    delay_ms: int,
) -> None:
    """Finding 3: the copy used to carry the malformed ``x-death`` unchanged; on
    3.10 the broker's dead-lettering then crashes (``function_clause``), the delay
    queue stays down and every later copy through it waits for ever."""
    book = ledger(f"x-death {label}, then {FOLLOWERS} copies through its delay queue")
    queue = unique("jobs")
    delay_queue = delay_queue_name(delay_ms)
    backoff = backoff_class(
        schedule=(delay_ms,), limit=3, random_sigma=0, name="ThroughDeath"
    )
    consumer = await start_consumer(
        connection,
        queue,
        book,
        backoff=backoff,
        until_delayed=True,
        # the delay queue outlives its last copy by a minute, so that the check of
        # its state below never finds it expired instead of crashed
        grace_ms=60_000,
    )
    try:
        await publish(
            connection, queue, book.new_ids(1, "hostile"), headers={"x-death": x_death}
        )
        await book.wait_settled(8)
        await publish(connection, queue, book.new_ids(FOLLOWERS, "after"))
        await book.wait_settled(12)
        state = await queue_state(fault_node, delay_queue)
    finally:
        await consumer.close()
        await fault_node.delete_queue(delay_queue)  # a crashed one, too
    book.assert_all_kept()
    assert state is not None, f"{delay_queue} is gone"
    assert state.get("state") == "running", f"{delay_queue} is {state.get('state')!r}"


async def queue_state(node: FaultNode, name: str) -> dict[str, Any] | None:
    """The queue's management record once it reports a state (the statistics of a
    queue declared a moment ago come a little later); None if there is no queue."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        record = await node.queue(name)
        if record is None or "state" in record or loop.time() > deadline:
            return record
        await asyncio.sleep(0.2)


def publish_with_py_amqp(
    node: FaultNode, queue: str, headers_by_id: dict[str, dict[str, Any]]
) -> None:
    """Publish with headers aio-pika cannot write: py-amqp writes ``bytes`` as a
    long string as is (so invalid UTF-8 arrives) and a float as a 64-bit double."""
    with amqp.Connection(f"127.0.0.1:{node.amqp_port}", "guest", "guest") as conn:
        channel = conn.channel()
        channel.confirm_select()
        for key, headers in headers_by_id.items():
            channel.basic_publish(
                amqp.Message(
                    key.encode(),
                    message_id=key,
                    delivery_mode=2,
                    application_headers=headers,
                ),
                exchange="",
                routing_key=queue,
            )


async def test_unencodable_headers_are_dropped_or_converted(
    connection: AbstractRobustConnection, fault_node: FaultNode, ledger, unique
) -> None:
    """Finding 2: pamqp decodes a non-UTF-8 string to ``bytes`` and a double to a
    float it then writes as a 32-bit float (1e308 overflows): encoding the copy
    failed and the original went round in a requeue loop."""
    book = ledger("unencodable headers: non-UTF-8 string, double 1e308")
    queue = unique("jobs")
    consumer = await start_consumer(connection, queue, book, until_delayed=True)
    try:
        text, double = book.new_ids(2, "hostile")
        await asyncio.to_thread(
            publish_with_py_amqp,
            fault_node,
            queue,
            {text: {"note": b"caf\xe9 \xff"}, double: {"ratio": 1e308}},
        )
        await book.wait_settled(8)
    finally:
        await consumer.close()
    book.assert_all_kept()


class Unlimited(Backoff):
    schedule = (35,)
    limit = None
    random_sigma = 0


async def test_highest_retry_count_with_no_limit(
    connection: AbstractRobustConnection, fault_node: FaultNode, ledger, unique
) -> None:
    """Finding 2: ``backoff-retries`` 2**63 - 1 with ``limit = None``: the next count
    did not fit the wire and the original went round in a requeue loop."""
    book = ledger("backoff-retries 2**63-1 with limit None")
    queue = unique("jobs")
    consumer = await start_consumer(
        connection, queue, book, backoff=Unlimited, until_delayed=True
    )
    try:
        await publish(
            connection,
            queue,
            book.new_ids(1, "hostile"),
            headers={"backoff-retries": 2**63 - 1},
        )
        await book.wait_settled(8)
    finally:
        await consumer.close()
    book.assert_all_kept()
