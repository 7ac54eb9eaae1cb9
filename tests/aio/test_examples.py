"""The example files in docs/examples run, against the test broker, and say so."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


async def run_example(name: str, broker: Any) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AIO_BACKOFF_AMQP_URL": broker.amqp_url},
    )
    async with asyncio.timeout(25):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def queue_exists(connection: AbstractRobustConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_demo_prints_a_timeline_and_cleans_up(
    broker: Any, connection: AbstractRobustConnection
) -> None:
    code, out, err = await run_example("demo.py", broker)

    assert code == 0, err
    timeline = re.findall(r"^\s+(\d+\.\d+)s  attempt (\d) +\((.*?)\)", out, re.M)
    assert [(attempt, after) for _, attempt, after in timeline] == [
        ("1", "first delivery"),
        ("2", "waited 200 ms"),
        ("3", "waited 400 ms"),
        ("4", "waited 800 ms"),
    ]
    seconds = [float(at) for at, _, _ in timeline]
    assert seconds[3] - seconds[0] >= 1.4
    assert seconds[3] < 5
    for retry, delay in ((1, 200), (2, 400), (3, 800)):
        assert f"retry #{retry} (limit 5) in {delay} ms" in out
    assert "succeeded after 4 attempts" in out
    [queue] = re.findall(r"queue '([^']+)'", out.splitlines()[0])
    assert not await queue_exists(connection, queue)


async def test_demo_explains_a_missing_broker() -> None:
    class Nowhere:
        amqp_url = "amqp://guest:guest@127.0.0.1:1/"

    code, _, err = await run_example("demo.py", Nowhere())

    assert code == 1
    assert "cannot reach RabbitMQ at amqp://guest:guest@127.0.0.1:1/" in err
    assert "AIO_BACKOFF_AMQP_URL" in err


async def test_quickstart(broker: Any) -> None:
    code, out, err = await run_example("quickstart.py", broker)

    assert code == 0, err
    assert out == "charged order-42 on attempt 3\n"


async def test_expiry_example(
    broker: Any, connection: AbstractRobustConnection
) -> None:
    code, out, err = await run_example("expiry.py", broker)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["attempt 1", "attempt 2", "attempt 3"]
    assert lines[3] == (
        "expired: Backoff aborted after '2' retries (~0 seconds) "
        "(cause: StockNotThere())"
    )
    [parking] = re.findall(r"parked in '([^']+)'", out)
    assert lines[5] == "  backoff-error: Backoff aborted after '2' retries (~0 seconds)"
    assert lines[6] == f"  backoff-queue: {parking.removesuffix('.parked')}"
    assert not await queue_exists(connection, parking)


async def test_reliability_example(
    broker: Any, connection: AbstractRobustConnection
) -> None:
    code, out, err = await run_example("reliability.py", broker)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("refused at definition: ")
    assert lines[0].endswith("got 3.0; write limit = 3")
    assert lines[1] == "handler runs: 1"  # parked at once, not looped
    [parking] = re.findall(r"parked in '([^']+)'", lines[2])
    assert "PRECONDITION_FAILED" in lines[2]
    assert lines[3] == "stopped: no more messages taken, nothing in flight"
    assert not await queue_exists(connection, parking)


async def test_topology_example_shares_a_queue_across_topologies(broker: Any) -> None:
    code, out, err = await run_example("topology.py", broker)

    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"RabbitMQ \d+\.\d+\.\d+: quorum ladder True", lines[0])
    pattern = r"^retry (\d) handled by the (\S+) consumer \((?:after (\d+) ms|first)\)$"
    handled = re.findall(pattern, out, re.M)
    assert [int(retry) for retry, _, _ in handled] == [0, 1, 2, 3]  # one count
    assert {name for _, name, _ in handled} == {"ladder", "per-delay"}
    waits = [int(after) for _, _, after in handled[1:]]
    assert all(
        waited >= delay for waited, delay in zip(waits, (37, 130, 250), strict=True)
    )
