"""The migration story: nameko-amqp-retry 0.7.1 and nameko_bridge on one queue.

During a rolling upgrade, old (0.7.1, its own virtual environment) and new
(nameko_bridge) instances of a service consume the same queue. On RabbitMQ 3.x
neither loses a message nor resets a count: 0.7.1 counts from ``x-death``, which the
broker keeps growing, and nameko_bridge reads the larger of ``x-death`` and its own
``backoff-retries`` header. A message whose retries run out on the new side is
kept in ``{queue}.parked`` (0.7.1 acks it away).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from tests import brokers
from tests.interop.conftest import NamekoSide
from tests.interop.jobs import (
    DOOMED_ATTEMPTS,
    DOOMED_FAILURES,
    OK_ATTEMPTS,
    OK_FAILURES,
    attempts,
    new_job,
    publish_job,
)
from tests.interop.processes import (
    UPSTREAM_VENV,
    NamekoProcess,
    Report,
    wait_for_consumers,
)
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.broker,
    pytest.mark.upstream,
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        brokers.current().major >= 4,
        reason="nameko-amqp-retry 0.7.1 counts retries from x-death, which RabbitMQ "
        "4.x resets on every republish: finish the migration on 3.x (see "
        "docs/interop.md)",
    ),
    pytest.mark.skipif(
        not (UPSTREAM_VENV / "bin" / "nameko").exists(),
        reason="nameko-amqp-retry 0.7.1 is not installed in .venv-upstream "
        "(scripts/setup.sh makes it)",
    ),
]


@pytest.fixture(scope="module")
def upstream(
    nameko_side: NamekoSide, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Report]:
    """An old nameko-amqp-retry 0.7.1 service on the session's migration queue."""
    url = brokers.current().amqp_url
    directory: Path = tmp_path_factory.mktemp("upstream")
    report = Report(directory / "report.jsonl")
    process = NamekoProcess.interop(
        "MigrationService",
        amqp_url=url,
        prefix=nameko_side.prefix,
        report=report.path,
        upstream=True,
        log_path=directory / "service.log",
    )
    try:
        asyncio.run(wait_for_consumers(url, [nameko_side.migration_queue], minimum=2))
        yield report
    finally:
        process.stop()


async def test_old_and_new_share_a_queue_without_losing_a_message_or_a_count(
    nameko_side: NamekoSide, upstream: Report, channel: AbstractChannel
) -> None:
    def records(key: str) -> list[dict[str, Any]]:
        return [*nameko_side.report.for_key(key), *upstream.for_key(key)]

    oks = [new_job(OK_FAILURES, "ok") for _ in range(6)]
    dooms = [new_job(DOOMED_FAILURES, "doomed") for _ in range(3)]
    for job in oks + dooms:
        await publish_job(channel, nameko_side.migration_queue, job)

    def finished() -> bool:
        return all(
            any(r["outcome"] == "ok" for r in records(job["key"])) for job in oks
        ) and all(
            any(r["outcome"] == "Expired" for r in records(job["key"])) for job in dooms
        )

    await wait_until(finished, seconds=20, what="all jobs to finish")
    await asyncio.sleep(0.2)  # nothing more may arrive

    sides: set[str] = set()
    crossed = 0
    for job in oks:
        assert attempts(records(job["key"])) == OK_ATTEMPTS
    for job in dooms:
        assert attempts(records(job["key"])) == DOOMED_ATTEMPTS
    for job in oks + dooms:
        handled_by = {r["side"] for r in records(job["key"])}
        sides |= handled_by
        crossed += len(handled_by) > 1
    assert sides == {"nameko_bridge", "nameko_amqp_retry"}
    assert crossed >= 1, "no message was retried by both versions"

    expired_on_the_new_side = {
        job["key"]
        for job in dooms
        if any(
            r["outcome"] == "Expired" and r["side"] == "nameko_bridge"
            for r in records(job["key"])
        )
    }
    assert (
        await parked_keys(channel, f"{nameko_side.migration_queue}.parked")
        == expired_on_the_new_side
    )


async def parked_keys(channel: AbstractChannel, name: str) -> set[str]:
    """The job keys parked in ``name`` (taken off it; the queue is deleted)."""
    queue = await channel.declare_queue(name, durable=True)
    keys: set[str] = set()
    try:
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            keys.add(json.loads(message.body)["key"])
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    return keys
