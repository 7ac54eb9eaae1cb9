"""Copies with no target queue wait in the ladder's undeliverable queue, and are
replayed once their target is back."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from aio_backoff import Ladder, replay_undeliverable
from aio_backoff.aiopika._ladder import declare_ladder
from tests.aio.retrying import get_one
from tests.waiting import wait_until_true

pytestmark = pytest.mark.timeout(30)


async def depth(channel: AbstractChannel, name: str) -> int:
    # on the underlying channel: aio-pika's robust channel answers a passive
    # declare of a queue it declared before from its cache
    raw = await channel.get_underlay_channel()
    declared = await raw.queue_declare(name, passive=True)
    assert declared is not None
    return declared.message_count or 0


async def test_a_copy_without_target_is_kept_then_replayed(
    channel: AbstractChannel, declared: Any, unique_name: Any
) -> None:
    ladder = declared.ladder(Ladder(unique_name("delays"), "classic"))
    target = declared.queue(unique_name("gone"))
    await declare_ladder(await channel.get_underlay_channel(), ladder)
    raw = await channel.get_underlay_channel()
    for delay in (5, 0):  # through two levels, and straight to the deliver exchange
        await raw.basic_publish(
            b"copy",
            exchange=ladder.entry(delay),
            routing_key=ladder.routing_key(delay, target),
            properties=aio_pika.Message(b"", headers={"backoff-retries": 1}).properties,
        )
    await raw.basic_publish(  # not a ladder copy: left alone
        b"stray", exchange=ladder.undeliverable, routing_key="stray"
    )

    async def all_three() -> bool:
        return await depth(channel, ladder.undeliverable) == 3

    await wait_until_true(all_three, what="both copies and the stray to be kept")

    async def stays(count: int) -> bool:
        return await depth(channel, ladder.undeliverable) == count

    missing = await replay_undeliverable(channel, ladder)
    assert (missing.replayed, missing.kept, missing.unreadable) == (0, 2, 1)
    await wait_until_true(lambda: stays(3), what="all three back: nothing lost")

    queue = await channel.declare_queue(target, durable=True)  # 4.3: not transient
    replayed = await replay_undeliverable(channel, ladder, target_queue=target)
    assert (replayed.replayed, replayed.kept) == (2, 0)
    assert replayed.targets == {target: 2}
    first, second = await get_one(queue), await get_one(queue)
    assert first.body == second.body == b"copy"
    assert first.headers["backoff-retries"] == 1
    await wait_until_true(lambda: stays(1), what="only the stray to stay")
