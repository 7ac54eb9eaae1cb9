"""RabbitMQ 4.x resets ``x-death`` when a client republishes a dead-lettered
message, so a count read from ``x-death`` alone (nameko-amqp-retry 0.7.1's) never
passes 1 and retries forever. Our ``backoff-retries`` header still reaches the limit.

Runs against the 4.x broker of ``scripts/rabbitmq4.sh`` whichever broker the suite
targets. When that broker is not up it is skipped locally, but fails in CI
(``CI=true``): there a missing broker is a broken run, not a reason to skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from aio_backoff import (
    ExpiredMessage,
    Retrier,
    legacy_retries,
    park,
    parking_queue_name,
    retries_done,
)
from tests import brokers
from tests.interop.jobs import Fast
from tests.interop.processes import ROOT
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

RABBITMQ4_URL = os.environ.get(
    "AIO_BACKOFF_RABBITMQ4_URL", "amqp://guest:guest@127.0.0.1:5673/"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing_broker(reason: str) -> None:
    """Skip the test locally; fail it in CI, where the 4.x broker must be up."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the 4.x broker is required)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def rabbitmq4() -> AsyncIterator[AbstractRobustConnection]:
    broker = brokers.current()
    url = broker.amqp_url if broker.major >= 4 else RABBITMQ4_URL
    try:
        connection = await aio_pika.connect_robust(url, timeout=3)
    except (OSError, ConnectionError, aio_pika.exceptions.AMQPError) as error:
        missing_broker(
            f"no RabbitMQ 4.x broker at {url} ({error!r}); start it with "
            "`scripts/rabbitmq4.sh ensure`"
        )
    version = connection.transport.connection.server_properties.get("version", b"")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if not version.startswith("4."):
        await connection.close()
        missing_broker(f"the broker at {url} is RabbitMQ {version}, not 4.x")
    try:
        yield connection
    finally:
        await connection.close()


async def test_our_count_reaches_the_limit_while_x_death_stays_at_1(
    rabbitmq4: AbstractRobustConnection,
) -> None:
    channel = await rabbitmq4.channel()
    name = f"test.rabbitmq4.{uuid.uuid4().hex[:8]}"
    queue = await channel.declare_queue(name, durable=True)
    seen: list[tuple[int, int]] = []
    expired: list[ExpiredMessage] = []

    async def handle(message: AbstractIncomingMessage) -> None:
        seen.append(
            (retries_done(message.headers), legacy_retries(message.headers, "backoff"))
        )
        raise Fast()

    async def on_expired(message: ExpiredMessage) -> None:
        await park(message)
        expired.append(message)

    retrier = Retrier(
        channel, backoff=Fast, on_expired=on_expired, topology="per-delay"
    )
    try:
        await retrier.consume(queue, handle)
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps({"key": "x"}).encode()), routing_key=name
        )
        await wait_until(lambda: bool(expired), what="the message to expire")
    finally:
        await retrier.close()
        await channel.queue_delete(name)
        await channel.queue_delete(parking_queue_name(name))

    ours = [count for count, _ in seen]
    from_x_death = [count for _, count in seen]
    assert ours == [0, 1, 2, 3]
    assert from_x_death == [0, 1, 1, 1]  # what nameko-amqp-retry 0.7.1 would see
    assert expired[0].error.retries == 3


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_a_missing_broker_fails_in_ci_and_skips_locally(
    ci: str, outcome: str, tmp_path: Path
) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "from tests.interop.test_rabbitmq4 import rabbitmq4  # noqa: F401\n\n"
        "async def test_needs_it(rabbitmq4):\n"
        "    pass\n"
    )
    env = {
        **os.environ,
        "CI": ci,
        "AIO_BACKOFF_BROKER": "rabbitmq3",
        "AIO_BACKOFF_RABBITMQ4_URL": "amqp://guest:guest@127.0.0.1:1/",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:pytest_eventlet",
            "-p",
            "no:pytest_nameko",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-q",
            str(probe),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert outcome in done.stdout, done.stdout + done.stderr
    assert (done.returncode != 0) == (ci == "true")  # a broken run in CI
