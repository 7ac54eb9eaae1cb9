"""Retry throughput: the library's consume path against a raw aio-pika loop.

Both sides do the same job: every message is backed off once (a delayed copy is
published with a 10 ms per-message expiration to a TTL queue that dead-letters it
back, with ``mandatory`` and a publisher confirm, then the original is acked) and is
acked on its second delivery. The figure is messages backed off and redelivered per
second, from the start of consuming a preloaded queue to the last ack.

- raw: a hand-written aio-pika callback: consume, republish with confirm, ack.
- library: ``aio_backoff.Retrier.consume`` with a handler that raises a ``Backoff``
  (10 ms schedule, no jitter) on the first delivery and returns on the second.

Each side is set up once and kept for all rounds, as a running service would be
(the raw side's delay queue and the library's ``Retrier``, with its lease book).
Rounds are interleaved (raw, library, then library, raw, ...) in one process, so
both sides see the same machine and broker. Prints each round (throughput and the
client's CPU time per message), the medians and the ratio library / raw.

``--hooks`` adds two sides: *baseline*, the same library code from git revision
``--baseline`` (default ``main``, from before the hooks; imported from a ``git
archive`` as ``aio_backoff_baseline``), and *listening*, the library with a hook
that listens to every event and does nothing. It prints library / baseline (the
cost of the hooks when nothing listens, the default) and listening / library (the
cost of a listener). Usage::

    .venv/bin/python bench/retry_throughput.py [--messages N] [--rounds R]
    .venv/bin/python bench/retry_throughput.py --hooks [--baseline REV]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aio_backoff import (
    DELAY_HEADER,
    RETRIES_HEADER,
    Backoff,
    Retrier,
    backoff_class,
)

try:
    from aio_backoff import Hooks
except ImportError:  # a checkout from before the hooks, for the comparison
    Hooks = None

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DELAY_MS = 10
BODY = b'{"order": 1234, "items": ["a", "b", "c"]}'
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Round:
    rate: float
    """messages backed off and redelivered per second"""
    cpu_us: float
    """this process's CPU time per message, in microseconds"""


def unique(label: str) -> str:
    return f"bench.{label}.{uuid.uuid4().hex[:8]}"


async def preload(channel: AbstractChannel, queue: str, count: int) -> None:
    """Publish ``count`` messages to ``queue`` with confirms, in batches."""
    exchange = channel.default_exchange
    batch = 500
    for start in range(0, count, batch):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(BODY, content_type="application/json"),
                    routing_key=queue,
                )
                for _ in range(min(batch, count - start))
            )
        )


class Finish:
    """Counts final acks and tells when all ``expected`` messages are done."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.event = asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.event.set()

    async def wait(self, label: str) -> None:
        try:
            await asyncio.wait_for(self.event.wait(), TIMEOUT_S)
        except TimeoutError:
            msg = (
                f"{label}: only {self.count} of {self.expected} messages finished "
                f"within {TIMEOUT_S} s; is the broker overloaded or a consumer stuck?"
            )
            raise RuntimeError(msg) from None


class Side(Protocol):
    name: str

    async def setup(self) -> None: ...
    async def round(self, messages: int) -> Round: ...
    async def teardown(self) -> None: ...


async def timed_round(
    channel: AbstractChannel,
    label: str,
    messages: int,
    consume: object,
) -> Round:
    """Preload a fresh queue, consume it with ``consume(queue, finish)``, time it."""
    queue = await channel.declare_queue(unique(label))
    try:
        await preload(channel, queue.name, messages)
        finish = Finish(messages)
        cpu_started = time.process_time()
        started = time.perf_counter()
        tag = await consume(queue, finish)  # type: ignore[operator]
        await finish.wait(label)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        await queue.cancel(tag)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    return Round(rate=messages / elapsed, cpu_us=cpu / messages * 1e6)


# -- raw aio-pika loop ---------------------------------------------------------------


class Raw:
    """consume; republish a copy to a TTL queue with mandatory + confirm; ack."""

    name = "raw"

    def __init__(self, connection: AbstractRobustConnection, prefetch: int) -> None:
        self.connection = connection
        self.prefetch = prefetch

    async def setup(self) -> None:
        self.channel = await self.connection.channel(publisher_confirms=True)
        await self.channel.set_qos(prefetch_count=self.prefetch)
        # durable, like the library's exchange and delay queue, so that the broker
        # does the same work for both sides
        self.exchange: AbstractExchange = await self.channel.declare_exchange(
            unique("raw-delay"), aio_pika.ExchangeType.HEADERS, durable=True
        )
        # the same arguments as the library's delay queue, less x-expires: nothing
        # here renews a lease (publishing does not count as use)
        self.delay: AbstractQueue = await self.channel.declare_queue(
            f"{self.exchange.name}--{DELAY_MS}ms",
            durable=True,
            arguments={"x-dead-letter-exchange": ""},
        )
        await self.delay.bind(
            self.exchange, arguments={DELAY_HEADER: DELAY_MS, "x-match": "any"}
        )

    async def round(self, messages: int) -> Round:
        exchange = self.exchange
        expiration = timedelta(milliseconds=DELAY_MS)

        async def consume(queue: AbstractQueue, finish: Finish) -> str:
            async def on_message(message: AbstractIncomingMessage) -> None:
                headers = message.headers
                if RETRIES_HEADER not in headers:
                    copy = aio_pika.Message(
                        message.body,
                        headers={**headers, DELAY_HEADER: DELAY_MS, RETRIES_HEADER: 1},
                        content_type=message.content_type,
                        content_encoding=message.content_encoding,
                        delivery_mode=message.delivery_mode,
                        correlation_id=message.correlation_id,
                        reply_to=message.reply_to,
                        message_id=message.message_id,
                        expiration=expiration,
                    )
                    await exchange.publish(copy, routing_key=queue.name, mandatory=True)
                    await message.ack()
                else:
                    await message.ack()
                    finish.one()

            return await queue.consume(on_message)

        return await timed_round(self.channel, "raw", messages, consume)

    async def teardown(self) -> None:
        await self.delay.delete(if_unused=False, if_empty=False)
        await self.exchange.delete()
        await self.channel.close()


# -- the library ----------------------------------------------------------------------


class Library:
    """``Retrier.consume``: ``Backoff`` on the first delivery, success on the next."""

    name = "library"

    def __init__(
        self,
        connection: AbstractRobustConnection,
        prefetch: int,
        *,
        listening: bool = False,
        baseline: ModuleType | None = None,
    ) -> None:
        self.connection = connection
        self.prefetch = prefetch
        self.listening = listening
        self.retrier_class: Any = Retrier if baseline is None else baseline.Retrier
        make_backoff = backoff_class if baseline is None else baseline.backoff_class
        if listening:
            self.name = "listening"
        elif baseline is not None:
            self.name = "baseline"
        self.backoff: type[Backoff] = make_backoff(
            schedule=(DELAY_MS,), limit=5, random_sigma=0, name="BenchBackoff"
        )

    async def setup(self) -> None:
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=self.prefetch)
        # an exchange of our own, so that no other consumer's copies share our
        # binding; the delay queue (backoff--10ms) is shared by name and expires
        # by itself once unused
        self.exchange = unique("lib-delay")
        hooks = {"hooks": Hooks(every=_ignore)} if self.listening else {}
        # per-delay, the topology the raw side hand-writes: the same job on both
        # sides (the ladder's own cost is measured by bench/topologies.py)
        self.retrier = self.retrier_class(
            self.channel,
            backoff=self.backoff,
            delay_exchange=self.exchange,
            topology="per-delay",
            **hooks,
        )

    async def round(self, messages: int) -> Round:
        backoff = self.backoff

        async def consume(queue: AbstractQueue, finish: Finish) -> str:
            async def handler(message: AbstractIncomingMessage) -> None:
                if RETRIES_HEADER not in message.headers:
                    raise backoff
                finish.one()

            return await self.retrier.consume(queue, handler)

        return await timed_round(self.channel, "lib", messages, consume)

    async def teardown(self) -> None:
        await self.retrier.close()
        await self.channel.exchange_delete(self.exchange)
        await self.channel.close()


def _ignore(event: object) -> None:
    """A hook that listens to everything and does nothing."""


def load_baseline(revision: str) -> ModuleType:
    """``aio_backoff`` as of git ``revision``, imported as ``aio_backoff_baseline``
    (its imports within the package are relative)."""
    archive = subprocess.run(
        ["git", "archive", revision, "aio_backoff"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    where = Path(tempfile.mkdtemp(prefix="aio-backoff-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    (where / "aio_backoff").rename(where / "aio_backoff_baseline")
    sys.path.insert(0, str(where))
    return importlib.import_module("aio_backoff_baseline")


# -- driver ---------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side")
    parser.add_argument(
        "--prefetch", type=int, default=100, help="consumer prefetch, both sides"
    )
    parser.add_argument(
        "--only",
        choices=["raw", "library", "baseline", "listening"],
        default=None,
        help="run one side",
    )
    parser.add_argument(
        "--hooks",
        action="store_true",
        help="also run the baseline revision and a library that listens",
    )
    parser.add_argument(
        "--baseline",
        default="main",
        help="git revision of the baseline side (default: main)",
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    connection = await aio_pika.connect_robust(AMQP_URL, timeout=10)
    sides: list[Side] = [
        side
        for side in (
            Raw(connection, args.prefetch),
            Library(connection, args.prefetch),
            *(
                [
                    Library(
                        connection,
                        args.prefetch,
                        baseline=load_baseline(args.baseline),
                    ),
                    Library(connection, args.prefetch, listening=True),
                ]
                if args.hooks
                else []
            ),
        )
        if args.only in (None, side.name)
    ]
    if args.hooks and Hooks is None:
        print("this checkout has no hooks: --hooks needs aio_backoff.Hooks")
        return 2
    results: dict[str, list[Round]] = {side.name: [] for side in sides}
    print(
        f"retry throughput: {args.messages} messages per round, {args.rounds} "
        f"rounds per side, delay {DELAY_MS} ms, prefetch {args.prefetch}, "
        f"broker {AMQP_URL.rsplit('@', 1)[-1]}",
        flush=True,
    )
    try:
        for side in sides:
            await side.setup()
        for side in sides:  # warm-up, not counted
            await side.round(min(500, args.messages))
        for index in range(args.rounds):
            order = sides if index % 2 == 0 else sides[::-1]
            figures = []
            for side in order:
                result = await side.round(args.messages)
                results[side.name].append(result)
                figures.append(
                    f"{side.name:>7s} {result.rate:6.0f} msg/s "
                    f"({result.cpu_us:4.0f} us CPU/msg)"
                )
            print(f"round {index + 1}: " + "   ".join(figures), flush=True)
    finally:
        for side in sides:
            await side.teardown()
        await connection.close()
    medians = {
        name: statistics.median(r.rate for r in rounds)
        for name, rounds in results.items()
    }
    cpu = {
        name: statistics.median(r.cpu_us for r in rounds)
        for name, rounds in results.items()
    }
    for name in results:
        print(
            f"median {name:>7s} {medians[name]:6.0f} msg/s "
            f"({cpu[name]:4.0f} us CPU/msg)"
        )
    # each round's figures were taken back to back, under the same load
    for side, against, what in (
        ("library", "raw", "(target >= 0.9)"),
        ("library", "baseline", "(hooks, nothing listening; target within 0.98..1.02)"),
        ("listening", "library", ""),
    ):
        if side in results and against in results:
            paired = statistics.median(
                one.rate / other.rate
                for one, other in zip(results[side], results[against], strict=True)
            )
            print(
                f"ratio {side}/{against} {medians[side] / medians[against]:.3f}"
                f"{' ' + what if what else ''}; median of the rounds' ratios "
                f"{paired:.3f}; CPU per message {side}/{against} "
                f"{cpu[side] / cpu[against]:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
