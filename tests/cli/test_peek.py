"""``aio-backoff peek``: the copies and parked messages of one queue, left in place."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from aio_backoff import Ladder
from aio_backoff.cli._broker import look
from tests.cli.conftest import (
    LEVEL,
    Cli,
    back_to,
    put_ladder_copy,
    put_parked,
    put_per_delay_copy,
    ready,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def unlimited_quorum(broker: Any) -> dict[str, Any]:
    """A quorum queue without a delivery limit (4.x has 20 unless told -1)."""
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if broker.major >= 4:
        arguments["x-delivery-limit"] = -1
    return arguments


async def dead_lettering(
    channel: AbstractChannel, name: str, to: str, arguments: dict[str, Any]
) -> None:
    """Queues ``to`` and ``name`` (durable), ``name`` with ``arguments`` and
    dead-lettering to ``to`` through the default exchange."""
    await channel.declare_queue(to, durable=True)
    await channel.declare_queue(
        name,
        durable=True,
        arguments={
            **arguments,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": to,
        },
    )


async def test_copies_and_parked_messages_of_one_queue(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    target, other = unique_name("orders"), unique_name("other")
    ladder = Ladder(unique_name("dx"), "classic")
    in_ladder = await put_ladder_copy(
        channel, declared, ladder, LEVEL, 2**LEVEL + 3, target, retries=2
    )
    await put_ladder_copy(channel, declared, ladder, LEVEL, 2**LEVEL, other)
    per_delay = random.randrange(10**8, 10**9)
    in_per_delay = await put_per_delay_copy(
        channel, declared, ladder.delay_exchange, per_delay, target, retries=5
    )
    parked = await put_parked(channel, declared, target, 2, reason="gave up")

    ran = await cli("peek", target, "--json", "--delay-exchange", ladder.delay_exchange)
    assert ran.code == 0, ran.err
    document = ran.json()
    copies = {copy["message_id"]: copy for copy in document["copies"]}
    assert set(copies) == {in_ladder, in_per_delay}
    assert copies[in_ladder]["retries"] == 2
    assert copies[in_ladder]["delay_ms"] == 2**LEVEL + 3
    assert copies[in_ladder]["where"] == ladder.level(LEVEL)
    assert copies[in_per_delay]["retries"] == 5
    assert copies[in_per_delay]["where"] == f"backoff--{per_delay}ms"
    assert [one["message_id"] for one in document["parked"]] == parked
    assert {one["reason"] for one in document["parked"]} == {"gave up"}
    assert {one["parked_from"] for one in document["parked"]} == {target}

    text = await cli(
        "peek", f"{target}.parked", "--delay-exchange", ladder.delay_exchange
    )
    assert f"copies waiting for {target}: 2" in text.out
    assert f"parked in {target}.parked: 2" in text.out
    assert parked[0] in text.out


async def test_limit_shows_the_head_of_the_parking_queue(
    cli: Cli, channel: AbstractChannel, declared: Any, unique_name: Callable[[str], str]
) -> None:
    target = unique_name("orders")
    parked = await put_parked(channel, declared, target, 5)
    ran = await cli("peek", target, "--limit", "2", "--json")
    assert ran.code == 0, ran.err
    assert [one["message_id"] for one in ran.json()["parked"]] == parked[:2]
    assert ran.json()["parked_total"] == 5


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_peeking_loses_nothing_and_keeps_the_order(
    cli: Cli,
    broker: Any,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
    queue_type: str,
) -> None:
    """What docs/cli.md says: same messages, same order, ``redelivered`` set."""
    target = unique_name("orders")
    arguments = None if queue_type == "classic" else unlimited_quorum(broker)
    parked = await put_parked(channel, declared, target, 5, arguments=arguments)
    for _ in range(3):
        ran = await cli("peek", target, "--json")
        assert [one["message_id"] for one in ran.json()["parked"]] == parked
    await back_to(connection, f"{target}.parked", 5)
    queue = await channel.declare_queue(f"{target}.parked", passive=True)
    seen = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        seen.append((message.message_id, message.redelivered))
    assert seen == [(message_id, True) for message_id in parked]


async def test_a_channel_close_counts_toward_a_quorum_delivery_limit(
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    """The broker behaviour that keeps peek off quorum queues with a limit (on
    RabbitMQ 3.10.8, 4.0.5 and 4.3.6): a message taken and given back by closing
    the channel is dead-lettered past the limit, as if it had been rejected."""
    name = declared.queue(unique_name("q"))
    dead = declared.queue(unique_name("dead"))
    await dead_lettering(
        channel, name, dead, {"x-queue-type": "quorum", "x-delivery-limit": 1}
    )
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=name)
    for _ in range(2):
        looking = await connection.channel()
        queue = await looking.declare_queue(name, passive=True)
        assert await queue.get(no_ack=False, fail=False) is not None
        await looking.close()
    await back_to(connection, dead, 1)
    assert await ready(connection, name) == 0


async def test_a_quorum_parking_queue_with_a_limit_is_counted_not_read(
    cli: Cli,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    target = unique_name("orders")
    await put_parked(
        channel, declared, target, 1,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 1},
    )  # fmt: skip
    for _ in range(3):
        ran = await cli("peek", target, "--json")
        assert ran.code == 0, ran.err
        assert ran.json()["parked"] == []
        assert ran.json()["parked_total"] == 1
        assert "delivery limit of 1" in ran.json()["notes"][-1]
    assert await ready(connection, f"{target}.parked") == 1


async def test_an_unknown_queue_exits_6(
    cli: Cli, unique_name: Callable[[str], str]
) -> None:
    ran = await cli("peek", unique_name("nothing"))
    assert ran.code == 6
    assert "Check the name and the virtual host" in ran.err


async def test_what_a_look_does_to_the_redelivered_flag_of_a_copy_at_its_target(
    broker: Any,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    """On RabbitMQ 3.10.8 and 4.0.5 the redelivered flag a look sets stays in the
    delay queue (dead-lettering puts a new message in the target queue); on 4.3.6
    the dead-lettered copy arrives at its target with the flag set (docs/cli.md)."""
    target = declared.queue(unique_name("orders"))
    waiting = declared.queue(unique_name("delay"))
    await dead_lettering(channel, waiting, target, {"x-message-ttl": 300})
    await channel.default_exchange.publish(
        aio_pika.Message(b"copy", message_id="copy-1"), routing_key=waiting
    )
    held = await look(connection, waiting, 10)
    assert held is not None
    assert [one.message_id for one in held] == ["copy-1"]
    await back_to(connection, target, 1)
    queue = await channel.declare_queue(target, passive=True)
    got = await queue.get(no_ack=True)
    follows = broker.name == "rabbitmq4.3"
    assert (got.message_id, got.redelivered) == ("copy-1", follows)
