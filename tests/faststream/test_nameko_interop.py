"""A FastStream subscriber and a nameko_bridge service on one queue: one count."""

from __future__ import annotations

from typing import Any

import pytest
from aio_pika.abc import AbstractChannel
from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitMessage, RabbitQueue

from aio_backoff import retries_done
from aio_backoff.faststream import BackoffMiddleware
from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import Shared, attempts, new_job, publish_job
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


async def test_a_queue_shared_with_a_nameko_service_keeps_one_count(
    nameko_side: NamekoSide, channel: AbstractChannel
) -> None:
    """The broker hands each delivery to either consumer; a job backs off five
    times wherever it lands and succeeds at retry 5 (``Shared``: 30 ms)."""
    broker = RabbitBroker(brokers.current().amqp_url)
    middleware = BackoffMiddleware(broker, backoff=Shared)
    ours: list[dict[str, Any]] = []

    @broker.subscriber(RabbitQueue(nameko_side.shared_queue, durable=True))
    async def handle(job: dict[str, Any], message: RabbitMessage) -> None:
        retries = retries_done(message.headers)
        done = retries >= job["failures"]
        ours.append(
            {
                "side": "faststream",
                "key": job["key"],
                "retries": retries,
                "outcome": "ok" if done else "Shared",
            }
        )
        if not done:
            raise Shared

    def records(key: str) -> list[dict[str, Any]]:
        mine = [record for record in ours if record["key"] == key]
        return [*nameko_side.report.for_key(key), *mine]

    jobs = [new_job(5, "ok") for _ in range(3)]
    app = FastStream(
        broker, on_startup=[middleware.start], after_shutdown=[middleware.stop]
    )
    await app.start()
    try:
        for job in jobs:
            await publish_job(channel, nameko_side.shared_queue, job)
        await wait_until(
            lambda: all(
                any(r["outcome"] == "ok" for r in records(job["key"])) for job in jobs
            ),
            seconds=20,
            what="all jobs to succeed",
        )
    finally:
        await app.stop()

    sides: set[str] = set()
    for job in jobs:
        assert attempts(records(job["key"])) == [(n, "Shared") for n in range(5)] + [
            (5, "ok")
        ]
        sides |= {record["side"] for record in records(job["key"])}
    assert sides == {"faststream", "nameko_bridge"}
