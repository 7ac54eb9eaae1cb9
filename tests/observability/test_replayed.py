"""``replay_undeliverable`` tells its hooks of each copy it delivers."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from aio_backoff import Ladder, replay_undeliverable
from aio_backoff.aiopika._ladder import declare_ladder
from aio_backoff.events import Replayed
from tests.aio.retrying import get_one
from tests.aio.test_ladder_replay import depth
from tests.observability.recording import Events
from tests.waiting import wait_until_true

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def test_each_replayed_copy_is_told(
    channel: AbstractChannel, declared: Any, unique_name: Any
) -> None:
    ladder = declared.ladder(Ladder(unique_name("delays"), "classic"))
    target = declared.queue(unique_name("late"))
    raw = await channel.get_underlay_channel()
    await declare_ladder(raw, ladder)
    await raw.basic_publish(
        b"copy",
        exchange=ladder.entry(0),
        routing_key=ladder.routing_key(0, target),
        properties=aio_pika.Message(b"", message_id="m-1").properties,
    )

    async def kept() -> bool:
        return await depth(channel, ladder.undeliverable) == 1

    await wait_until_true(kept, what="the copy to wait in the undeliverable queue")
    queue = await channel.declare_queue(target, durable=True)
    events = Events()
    done = await replay_undeliverable(channel, ladder, hooks=events.hooks())
    assert done.replayed == 1
    assert (await get_one(queue)).message_id == "m-1"
    assert events.seen == [Replayed(target, "m-1", ladder.undeliverable)]
