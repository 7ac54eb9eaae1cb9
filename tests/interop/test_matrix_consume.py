"""Plain queue consumers across stacks: a publisher on either stack x a consumer
on either stack (``nameko_bridge``'s ``@consume`` or ``aio_backoff.Retrier``).

Plus one queue consumed by both at once: a message retried across the two stacks
keeps one continuous count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from aio_backoff import Retrier, parking_queue_name
from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import (
    DOOMED_FAILURES,
    AioSide,
    Fast,
    Shared,
    attempts,
    check_ok_and_doomed,
    new_job,
    ok_and_doomed,
    ok_and_doomed_done,
    publish_job,
)
from tests.interop.processes import nameko_client
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(45)]


@pytest.mark.parametrize("consumer", ["asyncio", "nameko"])
@pytest.mark.parametrize("publisher", ["asyncio", "nameko"])
async def test_consume_backs_off_then_succeeds_or_expires(
    publisher: str,
    consumer: str,
    nameko_side: NamekoSide,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    ok, doomed = ok_and_doomed()
    aio = AioSide()
    retrier = Retrier(
        channel, backoff=Fast, on_expired=aio.on_expired, topology="per-delay"
    )
    if consumer == "nameko":
        queue_name = nameko_side.jobs_queue
        records = nameko_side.report.for_key
    else:
        queue_name = declared.queue(unique_name("jobs"))
        declared.queue(parking_queue_name(queue_name))
        queue = await channel.declare_queue(queue_name, durable=True)
        await retrier.consume(queue, aio.consume)
        records = aio.for_key

    if publisher == "asyncio":
        for job in (ok, doomed):
            await publish_job(channel, queue_name, job)
    else:
        await nameko_client(
            brokers.current().amqp_url,
            [["publish", queue_name, ok], ["publish", queue_name, doomed]],
        )
    await wait_until(
        ok_and_doomed_done(records, ok, doomed), what="the messages to be handled"
    )
    await retrier.close()

    check_ok_and_doomed(records, ok, doomed, nameko_handled=consumer == "nameko")


async def test_one_queue_two_stacks_one_continuous_count(
    nameko_side: NamekoSide, channel: AbstractChannel
) -> None:
    """A nameko_bridge service and an asyncio Retrier consume the same queue; the
    broker hands each delivery to either, and the count carries across."""
    aio = AioSide(backoff=Shared)
    retrier = Retrier(
        channel, backoff=Shared, on_expired=aio.on_expired, topology="per-delay"
    )
    queue = await channel.declare_queue(nameko_side.shared_queue, durable=True)
    tag = await retrier.consume(queue, aio.consume)
    report = nameko_side.report

    def records(key: str) -> list[dict[str, Any]]:
        return [*report.for_key(key), *aio.for_key(key)]

    jobs = [new_job(5, "ok") for _ in range(3)] + [new_job(DOOMED_FAILURES, "doomed")]
    for job in jobs:
        await publish_job(channel, queue.name, job)
    await wait_until(
        lambda: all(
            any(r["outcome"] in {"ok", "Expired"} for r in records(job["key"]))
            for job in jobs
        ),
        seconds=15,
        what="all jobs to finish",
    )
    await queue.cancel(tag)
    await retrier.close()
    await asyncio.sleep(0.1)  # a late nameko report line

    sides: set[str] = set()
    for job in jobs[:3]:
        steps = attempts(records(job["key"]))
        assert steps == [(n, "Shared") for n in range(5)] + [(5, "ok")]
        sides |= {r["side"] for r in records(job["key"])}
    doomed = attempts(records(jobs[3]["key"]))
    assert doomed == [(n, "Shared") for n in range(6)] + [(6, "Expired")]
    sides |= {r["side"] for r in records(jobs[3]["key"])}
    # both stacks took part (the broker round-robins between the two consumers)
    assert sides == {"asyncio", "nameko_bridge"}
