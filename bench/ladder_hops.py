"""What one hop of the ladder costs: single copies, straight into the ladder.

For pairs of delays with one set bit and with many (64 / 127, 1024 / 1023,
4096 / 4095 ms), ``--copies`` copies each (persistent, then transient), published
``--gap-ms`` apart straight into the library's classic ladder (its entry level, its
routing key) and timed on arrival at a target queue bound to the deliver exchange.
Prints p50 / p90 / max of the lateness beyond the delay, per delay, and the cost of
a hop: the extra lateness of the many-bit delay over the one-bit delay next to it,
divided by the extra hops. Declares a ladder of its own and deletes it.

Usage::

    .venv/bin/python bench/ladder_hops.py [AMQP_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aio_backoff import Ladder
from aio_backoff.aiopika._ladder import declare_ladder
from aio_backoff.core import LADDER_LEVELS

PAIRS = ((64, 127), (1024, 1023), (4096, 4095))


def hops(delay_ms: int) -> int:
    return bin(delay_ms).count("1")


async def main(url: str, copies: int, gap_ms: float) -> None:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    raw = await channel.get_underlay_channel()
    ladder = Ladder(f"bench.hops.{uuid.uuid4().hex[:8]}")
    await declare_ladder(raw, ladder)
    target = await channel.declare_queue(f"{ladder.prefix}.target", durable=True)
    binding = ladder.target_binding(target.name)
    await target.bind(binding.source, binding.routing_key)
    arrived: dict[str, float] = {}
    expected: set[str] = set()
    all_back = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrived[message.message_id or ""] = time.monotonic()
        await message.ack()
        if expected <= arrived.keys():
            all_back.set()

    await target.consume(on_message)
    sent: dict[str, float] = {}
    try:
        for mode, label in ((2, "persistent"), (1, "transient")):
            p50: dict[int, float] = {}
            for pair in PAIRS:
                for delay in pair:
                    entry = await channel.get_exchange(
                        ladder.entry(delay), ensure=False
                    )
                    ids: list[str] = []
                    all_back.clear()
                    for n in range(copies):
                        key = f"{mode}-{delay}-{n}"
                        expected.add(key)
                        sent[key] = time.monotonic()
                        await entry.publish(
                            aio_pika.Message(b"x", message_id=key, delivery_mode=mode),
                            ladder.routing_key(delay, target.name),
                        )
                        ids.append(key)
                        await asyncio.sleep(gap_ms / 1000)
                    if not expected <= arrived.keys():
                        await asyncio.wait_for(all_back.wait(), 30 + delay / 1000)
                    late = sorted(
                        (arrived[key] - sent[key]) * 1000 - delay for key in ids
                    )
                    p50[delay] = statistics.median(late)
                    print(
                        f"{label:10} {delay:5d} ms, {hops(delay):2d} hops: "
                        f"p50 {p50[delay]:5.1f}  p90 {late[int(len(late) * 0.9)]:5.1f}"
                        f"  max {late[-1]:5.1f} ms late",
                        flush=True,
                    )
            for one, many in PAIRS:
                per_hop = (p50[many] - p50[one]) / (hops(many) - hops(one))
                print(f"{label:10} a hop costs {per_hop:.2f} ms ({one} vs {many} ms)")
    finally:
        # the consuming channel first: a robust channel whose consumer the broker
        # cancels (its queue deleted) would declare the queue again
        await channel.close()
        raw = await (await connection.channel()).get_underlay_channel()
        for queue in [*ladder.queue_names, target.name]:
            await raw.queue_delete(queue)
        for level in range(LADDER_LEVELS):
            await raw.exchange_delete(ladder.level(level))
        await raw.exchange_delete(ladder.deliver_exchange)
        await raw.exchange_delete(ladder.undeliverable)
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.copies, args.gap_ms))
