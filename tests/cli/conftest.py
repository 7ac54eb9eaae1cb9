"""Fixtures for the command line's tests: the aio-pika ones (unique names,
``declared`` for cleanup) and ``cli``, which runs ``aio-backoff`` against the broker
under test and keeps its exit code and output."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from aio_backoff import DelayQueue, Ladder, parking_queue_name
from aio_backoff.cli import main
from aio_backoff.core._protocol import (
    DELAY_HEADER,
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    RETRIES_HEADER,
)
from tests import brokers
from tests.aio_fixtures import *  # noqa: F403
from tests.aio_fixtures import Declared
from tests.waiting import wait_until_true


@dataclass(frozen=True)
class Ran:
    """What one ``aio-backoff`` run did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Awaitable[Ran]]

LEVEL = 21
"""A ladder level whose wait (2**21 ms, 35 minutes) outlasts any test: a copy put
there stays put."""


def broker_options(broker: brokers.Broker) -> list[str]:
    """``--url`` and ``--management-url`` of the broker under test."""
    return ["--url", broker.amqp_url, "--management-url", broker.api_url]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], broker: brokers.Broker) -> Cli:
    """``await cli("status", "--json")``: ``main()`` in a thread (it runs its own
    event loop), with the broker under test's options appended unless
    ``broker=False``; returns a :class:`Ran`."""

    async def run(*argv: str, with_broker: bool = True) -> Ran:
        args = [*argv, *(broker_options(broker) if with_broker else [])]
        capsys.readouterr()
        code = await asyncio.to_thread(main, args)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


# -- messages where the command line looks for them ----------------------------------
#
# Each helper declares what it needs through ``declared`` (the fixture of
# tests/aio_fixtures.py), so the test's cleanup deletes it.


async def put_parked(
    channel: AbstractChannel,
    declared: Declared,
    queue: str,
    count: int,
    *,
    reason: str = "Backoff aborted after '3' retries",
    arguments: dict[str, Any] | None = None,
) -> list[str]:
    """``count`` parked messages in ``{queue}.parked`` as the library parks them
    (``backoff-error``, ``backoff-queue``, ``backoff-retries``); their ids, in order."""
    parking = declared.queue(parking_queue_name(queue))
    await channel.declare_queue(parking, durable=True, arguments=arguments)
    ids = [f"parked-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    for i, message_id in enumerate(ids):
        await channel.default_exchange.publish(
            aio_pika.Message(
                f"body {i}".encode(),
                message_id=message_id,
                headers={
                    PARKED_ERROR_HEADER: reason,
                    PARKED_QUEUE_HEADER: queue,
                    RETRIES_HEADER: 3,
                },
            ),
            routing_key=parking,
        )
    return ids


async def put_ladder_copy(
    channel: AbstractChannel,
    declared: Declared,
    ladder: Ladder,
    level: int,
    delay_ms: int,
    target: str,
    *,
    retries: int = 1,
    extra_arguments: dict[str, Any] | None = None,
) -> str:
    """A copy for ``target`` waiting in ``ladder``'s level ``level`` (declared with
    its arguments, plus ``extra_arguments``), as if it had just entered it; its id.
    The level's exchange here routes every key to its queue."""
    declared.ladder(ladder)
    name = ladder.level(level)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={**ladder.level_arguments(level), **(extra_arguments or {})},
    )
    exchange = await channel.declare_exchange(name, type="topic", durable=True)
    await queue.bind(exchange, routing_key="#")
    message_id = f"copy-{uuid.uuid4().hex[:8]}"
    await exchange.publish(
        aio_pika.Message(
            b"copy",
            message_id=message_id,
            headers={DELAY_HEADER: delay_ms, RETRIES_HEADER: retries},
        ),
        routing_key=ladder.routing_key(delay_ms, target),
    )
    return message_id


async def put_per_delay_copy(
    channel: AbstractChannel,
    declared: Declared,
    delay_exchange: str,
    delay_ms: int,
    target: str,
    *,
    retries: int = 1,
) -> str:
    """A copy for ``target`` in the per-delay queue of ``delay_ms`` (bound to
    ``delay_exchange``), published as the library publishes it; its id."""
    delay_queue = DelayQueue(delay_ms, delay_exchange)
    exchange = await channel.declare_exchange(
        declared.exchange(delay_exchange), type="headers", durable=True
    )
    queue = await channel.declare_queue(
        declared.queue(delay_queue.name), durable=True, arguments=delay_queue.arguments
    )
    await queue.bind(exchange, arguments=delay_queue.binding_arguments)
    message_id = f"copy-{uuid.uuid4().hex[:8]}"
    await exchange.publish(
        aio_pika.Message(
            b"copy",
            message_id=message_id,
            expiration=delay_ms / 1000,
            headers={DELAY_HEADER: delay_ms, RETRIES_HEADER: retries},
        ),
        routing_key=target,
    )
    return message_id


async def ready(connection: AbstractConnection, queue: str) -> int:
    """The ready messages of ``queue`` (a passive declare on a channel of its own:
    on a channel that published to it, the count lagged behind on RabbitMQ 3.10)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    finally:
        await channel.close()
    return int(declared.declaration_result.message_count or 0)


async def back_to(connection: AbstractConnection, queue: str, count: int) -> None:
    """Wait until ``queue`` has ``count`` ready messages again: a closed channel's
    messages go back to their queue moments after the close."""

    async def check() -> bool:
        return await ready(connection, queue) == count

    await wait_until_true(check, seconds=5, what=f"{count} messages in {queue}")
