"""docs/cli.md, run: every ``$ ...`` line of its ``console`` blocks runs in a shell
against a virtual host of its own, set up as the page says, and prints what the page
shows, once the times that differ from run to run are masked (timestamps, durations,
rates, the broker's patch version).

``AIO_BACKOFF_WRITE_DOCS=1`` writes what ran into docs/cli.md instead of comparing
(then review the diff): the way to refresh the page after changing an output.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from aio_backoff import Backoff, DelayQueue, Ladder, Retrier
from aio_backoff.core._ladder import LADDER_LEVELS
from aio_backoff.core._protocol import (
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    RETRIES_HEADER,
)
from aio_backoff.events import Hooks
from tests import brokers

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "cli.md"

REPLAYED = 1000
"""Messages parked in ``shop.orders.parked`` for the replay examples."""


class OrderNotReady(Backoff):
    """The page's service: one retry, ten minutes later (so no copy moves on while
    the examples run), no jitter."""

    schedule = (600_000,)
    limit = 1
    random_sigma = 0


# -- the page's blocks -------------------------------------------------------------


@dataclass
class Command:
    line: str  # without the "$ "
    shown: str  # the output on the page
    printed: str = ""  # what it printed here


def console_blocks(text: str) -> Iterator[tuple[int, int, list[Command]]]:
    """Each ``console`` block of ``text``: its start and end offsets (its body) and
    its commands."""
    for match in re.finditer(r"```console\n(.*?)```\n", text, flags=re.DOTALL):
        commands: list[Command] = []
        for line in match.group(1).splitlines(keepends=True):
            if line.startswith("$ "):
                commands.append(Command(line[2:].rstrip("\n"), ""))
            else:
                assert commands, f"output before any command in {match.group(0)!r}"
                commands[-1].shown += line
        yield match.start(1), match.end(1), commands


MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"), "<timestamp>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b"), "<time>"),
    (re.compile(r"in \d+(\.\d+)? m?s, \d+/s"), "in <duration>, <rate>/s"),
    (re.compile(r'"seconds": \d+(\.\d+)?'), '"seconds": <seconds>'),
    (re.compile(r"RabbitMQ 3\.\d+\.\d+"), "RabbitMQ 3.x"),
    (re.compile(r"[ -]+$", flags=re.MULTILINE), ""),  # a table's padding
]


def masked(output: str) -> str:
    for pattern, mask in MASKS:
        output = pattern.sub(mask, output)
    return output


# -- where the examples run --------------------------------------------------------


def api(broker: brokers.Broker, method: str, path: str, body: object = None) -> None:
    """One call of the management API (urllib: no client library needed)."""
    parts = urllib.parse.urlsplit(broker.api_url)
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    credentials = f"{parts.username}:{parts.password}".encode()
    request.add_header(
        "Authorization", f"Basic {base64.b64encode(credentials).decode()}"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def vhost() -> Iterator[str]:
    """A virtual host of this test's own, deleted with everything in it."""
    broker = brokers.current()
    name = f"docs-cli-{uuid.uuid4().hex[:8]}"
    api(broker, "PUT", f"vhosts/{name}")
    user = urllib.parse.urlsplit(broker.amqp_url).username
    api(
        broker,
        "PUT",
        f"permissions/{name}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    try:
        yield name
    finally:
        api(broker, "DELETE", f"vhosts/{name}")


def vhost_url(vhost: str) -> str:
    """The local broker's URL with the host name the page shows."""
    return f"amqp://guest:guest@localhost:5672/{urllib.parse.quote(vhost, safe='')}"


async def set_the_scene(channel: AbstractChannel) -> None:
    """What the page's examples ran on (its text before the status section).

    - queue ``orders``, its service on the ladder of ``delay_exchange="shop"``: three
      messages retried once (copies in level 19, 10 minutes), two more that come with
      their retry spent, parked in ``orders.parked``;
    - queue ``invoices`` on the per-delay topology: one message retried;
    - a per-delay queue a service with another grace declared (verify's finding);
    - the ladder ``demo``, level 7 missing and level 5 with another TTL;
    - ``shop.orders.parked`` with 1,000 messages parked after 20 retries (replay).
    One message at a time, each step awaited, so that the output's order is fixed.
    """
    happened: asyncio.Queue[str] = asyncio.Queue()
    hooks = Hooks(
        scheduled=lambda event: happened.put_nowait(f"scheduled {event.queue}"),
        parked=lambda event: happened.put_nowait(f"parked {event.queue}"),
    )

    async def not_ready(message: AbstractIncomingMessage) -> None:
        raise OrderNotReady

    async def step(queue: str, message_id: str, expect: str, retries: int = 0) -> None:
        headers = {RETRIES_HEADER: retries} if retries else None
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id=message_id, headers=headers),
            routing_key=queue,
        )
        async with asyncio.timeout(20):
            assert await happened.get() == expect

    common = {"backoff": OrderNotReady, "delay_exchange": "shop", "hooks": hooks}
    orders = await channel.declare_queue("orders", durable=True)
    await Retrier(channel, topology="ladder", **common).consume(orders, not_ready)
    for i in range(3):
        await step("orders", f"order-{i}", "scheduled orders")
    for i in (3, 4):
        await step("orders", f"order-{i}", "parked orders", retries=1)
    invoices = await channel.declare_queue("invoices", durable=True)
    await Retrier(channel, topology="per-delay", **common).consume(invoices, not_ready)
    await step("invoices", "invoice-0", "scheduled invoices")

    other_grace = DelayQueue(120_000, "shop", grace_ms=10_000)
    queue = await channel.declare_queue(
        other_grace.name, durable=True, arguments=other_grace.arguments
    )
    await queue.bind("shop", arguments=other_grace.binding_arguments)

    demo = Ladder("demo", "classic")
    await channel.declare_queue(
        demo.undeliverable, durable=True, arguments=demo.undeliverable_arguments
    )
    for level in range(LADDER_LEVELS):
        arguments = demo.level_arguments(level)
        if level == 7:
            continue
        if level == 5:
            arguments["x-message-ttl"] = 31
        await channel.declare_queue(
            demo.level(level), durable=True, arguments=arguments
        )

    await channel.declare_queue("shop.orders", durable=True)
    await channel.declare_queue("shop.orders.parked", durable=True)
    for i in range(REPLAYED):
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"{}",
                message_id=f"parked-{i}",
                headers={
                    PARKED_ERROR_HEADER: "Backoff aborted after '20' retries",
                    PARKED_QUEUE_HEADER: "shop.orders",
                    RETRIES_HEADER: 20,
                },
            ),
            routing_key="shop.orders.parked",
        )


def run(line: str, url: str) -> str:
    """One of the page's command lines, in bash, from the repository's root, with
    the ``aio-backoff`` of the Python running the tests; stdout and stderr as a
    terminal shows them."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIO_BACKOFF_")
    }
    env |= {
        "AIO_BACKOFF_AMQP_URL": url,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    ran = subprocess.run(
        ["bash", "-c", line],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )
    return ran.stdout


@pytest.mark.skipif(
    brokers.current().name != "rabbitmq3" or "AIO_BACKOFF_AMQP_URL" in os.environ,
    reason="docs/cli.md shows the local RabbitMQ 3.10 (5672, management on 15672)",
)
async def test_docs_cli_md_shows_what_the_commands_print(vhost: str) -> None:
    url = vhost_url(vhost)
    connection = await aio_pika.connect(url)
    async with connection:
        await set_the_scene(await connection.channel())

        text = PAGE.read_text()
        blocks = list(console_blocks(text))
        assert len(blocks) >= 8, "docs/cli.md lost its console blocks"
        for _start, _end, commands in blocks:
            for command in commands:
                printed = await asyncio.to_thread(run, command.line, url)
                command.printed = printed.replace(f"'{vhost}'", "'/'")

    if os.environ.get("AIO_BACKOFF_WRITE_DOCS") == "1":
        pieces, done = [], 0
        for start, end, commands in blocks:
            pieces.append(text[done:start])
            pieces.extend(f"$ {c.line}\n{c.printed}" for c in commands)
            done = end
        PAGE.write_text("".join([*pieces, text[done:]]))
        return  # written, not compared: review the diff

    for _start, _end, commands in blocks:
        for command in commands:
            assert masked(command.printed) == masked(command.shown), command.line
