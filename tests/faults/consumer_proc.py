"""A consumer in a process of its own, for the SIGKILL scenario.

``python -m tests.faults.consumer_proc AMQP_URL QUEUE REPORT [HOLD_ID]``

Consumes QUEUE with a ``Retrier`` (see ``harness.start_consumer``, ``until_delayed``)
and appends ``ran ID`` / ``ok ID`` lines to REPORT. With HOLD_ID, once the delayed
copy of that message is confirmed it prints ``confirmed HOLD_ID`` and stops there,
before the original is acked: the test kills it at that moment.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from aio_backoff import DelayedPublisher, RetryPlan
from tests.faults.harness import start_consumer


class Holding(DelayedPublisher):
    """Stops for good right after the confirm of ``hold``'s copy."""

    hold: str | None = None

    async def publish_copy(
        self,
        message: AbstractIncomingMessage,
        plan: RetryPlan,
        *,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        await super().publish_copy(message, plan, extra_headers=extra_headers)
        if message.message_id == self.hold:
            print(f"confirmed {self.hold}", flush=True)
            await asyncio.Event().wait()


class FileReport:
    """The ledger calls the consumer makes, as lines appended to a file."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _write(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())  # one write: whole lines survive

    def ran(self, key: str) -> int:
        self._write(f"ran {key}")
        return 0

    def succeeded(self, key: str) -> None:
        self._write(f"ok {key}")

    def watch(self, queue: str) -> None:
        pass


async def main(url: str, queue: str, report: str, hold: str | None) -> None:
    connection = await aio_pika.connect_robust(url)
    publisher = Holding(await connection.channel(), topology="per-delay")
    publisher.hold = hold
    await start_consumer(
        connection,
        queue,
        FileReport(report),  # type: ignore[arg-type]
        until_delayed=True,
        prefetch=5,
        publisher=publisher,
    )
    print("consuming", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4], sys.argv[4] if len(sys.argv) > 4 else None))
