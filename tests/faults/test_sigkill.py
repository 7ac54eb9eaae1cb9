"""A consumer is killed (SIGKILL) between the confirm of a delayed copy and the ack
of its original, and started again: the duplicate is bounded and counted, nothing
is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.faults.harness import publish
from tests.faults.ledger import Ledger
from tests.faults.node import FaultNode

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

MESSAGES = 200
PREFETCH = 5  # consumer_proc's: at most this many originals are unacked at a kill
ROOT = Path(__file__).resolve().parents[2]


async def start(node: FaultNode, queue: str, report: Path, hold: str | None = None):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.faults.consumer_proc",
        node.robust_url,
        queue,
        str(report),
        *([hold] if hold else []),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(15):
        line = await process.stdout.readline()
    assert line.strip() == b"consuming", f"consumer_proc said {line!r}"
    return process


async def kill_after_confirm(process: asyncio.subprocess.Process, hold: str) -> None:
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            line = await process.stdout.readline()
    except TimeoutError:
        process.kill()
        msg = f"the copy of {hold} was never confirmed through publish_copy"
        raise AssertionError(msg) from None
    assert line.strip() == f"confirmed {hold}".encode(), line
    process.send_signal(signal.SIGKILL)
    await process.wait()


def read_report(book: Ledger, report: Path) -> None:
    book.successes.clear()
    book.runs.clear()
    for line in report.read_text().splitlines():
        what, key = line.split(" ", 1)
        if what == "ran":
            book.ran(key)
        else:
            book.succeeded(key)


async def test_consumer_killed_between_confirm_and_ack(
    connection: AbstractRobustConnection,
    fault_node: FaultNode,
    ledger,
    unique,
    tmp_path: Path,
) -> None:
    book = ledger("consumer SIGKILLed twice between copy confirm and ack")
    queue = unique("jobs")
    report = tmp_path / "report.txt"
    report.touch()
    ids = book.new_ids(MESSAGES)
    async with connection.channel() as channel:
        await channel.declare_queue(queue, durable=True)  # as consumer_proc does
    await publish(connection, queue, ids)
    kills = 0
    final = None
    try:
        for hold in (ids[20], ids[120]):
            process = await start(fault_node, queue, report, hold)
            await kill_after_confirm(process, hold)
            kills += 1
        final = await start(fault_node, queue, report)
        async with asyncio.timeout(30):
            while True:
                read_report(book, report)
                if not book.unsettled():
                    break
                await asyncio.sleep(0.2)
    except TimeoutError:
        pass
    finally:
        if final is not None:
            final.kill()
            await final.wait()
        await fault_node.delete_queue(queue)
    read_report(book, report)
    book.assert_all_kept()
    duplicates = book.row().duplicates
    assert 1 <= duplicates <= kills * PREFETCH, (
        f"{duplicates} duplicates after {kills} kills (prefetch {PREFETCH})"
    )
