"""One message through two retries to its parking queue, with the given hooks."""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from aio_backoff import Hooks
from aio_backoff.events import Parked
from tests.aio.retrying import Recorder, fast_backoff, publish
from tests.observability.recording import Events
from tests.waiting import wait_until

TWICE = fast_backoff(schedule=(30,), limit=2, name="Twice")

RETRIED_TWICE_THEN_PARKED = [
    "Scheduled",
    "CameBack",
    "Scheduled",
    "CameBack",
    "Expired",
    "Parked",
]
"""The kinds of event, in order, that a message retried twice and parked is told by."""


async def retried_twice_then_parked(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
    hooks: Hooks,
) -> Recorder:
    """Publish one message whose handler always backs off; return once parked."""
    declared.queue(f"{target.name}.parked")
    events = Events()
    retrier = make_retrier(backoff=TWICE, hooks=hooks + events.hooks())
    recorder = Recorder()

    async def handle(message: AbstractIncomingMessage) -> None:
        recorder.record(message)
        raise retrier.policy.backoff()

    await retrier.consume(target, handle)
    await publish(channel, target.name)
    await wait_until(lambda: events.of(Parked), what="the message to be parked")
    return recorder
