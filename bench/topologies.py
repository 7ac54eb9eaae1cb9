"""Delay topologies side by side: throughput, lateness, a burst, queues, memory.

One run measures every topology the library offers, and Celery's ladder as the peer,
against the same broker and on the same machine, interleaved:

- ``raw``: a hand-written aio-pika relay (consume, publish the copy to a TTL queue
  with a per-message expiration, confirmed, ack): the baseline of
  bench/retry_throughput.py; throughput only.
- ``per-delay``, ``ladder classic``, ``ladder quorum``: ``aio_backoff.Retrier`` with
  that ``topology=`` / ``queue_type=``.
- ``plugin``: ``Retrier(topology="plugin")`` on the broker that
  ``AIO_BACKOFF_PLUGIN_AMQP_URL`` names (with its own ``raw`` baseline there);
  skipped when the variable is unset or the broker has no plugin.
- ``celery classic``, ``celery quorum``: kombu's ``native_delayed_delivery`` (Celery
  5.5's ladder: 28 levels of whole seconds): declared and bound with kombu's own
  functions, each copy published by an aio-pika relay to level 27 with
  ``calculate_routing_key``, as Celery's ``send_task`` does. Needs kombu >= 5.7
  (``bench/requirements.txt``, the ``.venv-bench`` venv).

What is measured (every message is persistent; copies are confirmed before the
original is acked):

1. throughput: copies placed per second. A preloaded queue is consumed (prefetch
   100) and every message fails once with a 10-minute delay; timed from the start
   of consuming to the last confirmed copy (the copies are purged after each round).
   Rounds interleaved, order rotated; medians and the median of each round's ratio
   to ``raw`` on the same broker.
2. lateness: messages fail at 100 msg/s for a few seconds; lateness = (second
   delivery - first delivery) - delay, in ms, p50 and p99 per run. Runs are packed
   so that no run's sending or redelivery overlaps another's.
3. burst: 100 messages fail at once (1 s delay) on a fresh consumer: the ladder and
   the plugin's exchange are declared before consuming, per-delay declares its
   delay queue with the first copy (a fresh delay exchange each time).
4. queues: the broker's queues per topology after the runs.
5. memory (``--memory``): 1,000,000 copies waiting an hour, on a RabbitMQ node of
   its own (scripts/faultbroker.sh, started and stopped here, fresh per variant):
   the node's ``mem_used`` from the management API before and after.

Usage::

    .venv-bench/bin/python bench/topologies.py --quick     # about 4 minutes
    .venv-bench/bin/python bench/topologies.py             # full: 60 s delays too
    .venv-bench/bin/python bench/topologies.py --memory    # + the 1M copies (long)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aio_backoff import (  # noqa: E402
    DELAY_HEADER,
    RETRIES_HEADER,
    Backoff,
    CopyNotPlaced,
    DelayQueue,
    Ladder,
    Retrier,
    backoff_class,
    plan_retry,
)
from aio_backoff.core import LADDER_LEVELS  # noqa: E402
from bench.ladder_prototype import HeadersLadder  # noqa: E402

try:
    from kombu import Connection as KombuConnection
    from kombu import Exchange as KombuExchange
    from kombu import Queue as KombuQueue
    from kombu.transport import native_delayed_delivery as celery_ladder
except ImportError:  # pragma: no cover - the main venv may have an older kombu
    celery_ladder = None

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PLUGIN_URL = os.environ.get("AIO_BACKOFF_PLUGIN_AMQP_URL", "")
MEMORY_URL = "amqp://guest:guest@127.0.0.1:5690/"
BODY = b'{"order": 1234, "items": ["a", "b", "c"]}'
PREFETCH = 100
RATE = 100.0
"""Messages per second failing in the lateness runs."""
THROUGHPUT_DELAY_MS = 600_013
"""10 minutes: nothing comes back during a round; an odd figure, so that the
per-delay queue (``backoff--600013ms``, named by the delay alone) is this run's."""
BURST = 100
BURST_DELAY_MS = 1000
RELAY_HEADER = "bench-relayed"
PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
TIMEOUT_S = 120.0


def unique(label: str) -> str:
    return f"bench.topo.{label}.{uuid.uuid4().hex[:8]}"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


# -- the management API ---------------------------------------------------------------


class Api:
    """Just enough of the management API, with the AMQP URL's credentials."""

    def __init__(self, amqp_url: str, api_url: str | None = None) -> None:
        parts = urllib.parse.urlsplit(amqp_url)
        port = (parts.port or 5672) + 10000
        self.base = (api_url or f"http://{parts.hostname}:{port}").rstrip("/")
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.auth = f"Basic {token}"
        self.vhost = urllib.parse.unquote(parts.path[1:]) or "/"

    def get(self, path: str, **query: Any) -> Any:
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Authorization": self.auth})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def send(self, method: str, path: str, body: Any = None) -> None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": self.auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30):
            pass

    async def aget(self, path: str, **query: Any) -> Any:
        return await asyncio.to_thread(self.get, path, **query)

    def queue_names(self, pattern: str) -> list[str]:
        """Names of the vhost's queues matching the regular expression."""
        vhost = urllib.parse.quote(self.vhost, safe="")
        names: list[str] = []
        page = 1
        while True:
            answer = self.get(
                f"/api/queues/{vhost}",
                name=pattern,
                use_regex="true",
                page=page,
                page_size=500,
                columns="name",
            )
            names += [item["name"] for item in answer["items"]]
            if page >= answer.get("page_count", 1):
                return names
            page += 1

    def queue_exists(self, name: str) -> bool:
        vhost = urllib.parse.quote(self.vhost, safe="")
        try:
            self.get(f"/api/queues/{vhost}/{urllib.parse.quote(name, safe='')}")
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        return True

    def version(self) -> str:
        return str(self.get("/api/overview")["rabbitmq_version"])


# -- sides ----------------------------------------------------------------------------


@dataclass
class Hooks:
    """What a side calls back: first delivery, redelivery, copy confirmed."""

    on_fail: Callable[[AbstractIncomingMessage], None]
    on_back: Callable[[AbstractIncomingMessage], None]
    on_placed: Callable[[str | None], None]
    """Called with the message's id once its copy is confirmed."""


def _noop(*_: object) -> None:
    return None


@dataclass
class Broker:
    url: str
    connection: AbstractRobustConnection
    api: Api
    version: str

    @property
    def label(self) -> str:
        port = urllib.parse.urlsplit(self.url).port
        return f"{self.version} :{port}"


class Side:
    """One way of delaying copies, on one broker."""

    key = "?"
    resolution_ms = 1
    lateness = True

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.notes: list[str] = []

    @property
    def title(self) -> str:
        return self.key

    async def setup(self) -> None:
        self.channel = await self.broker.connection.channel()
        await self.channel.set_qos(prefetch_count=PREFETCH)
        self.admin = await self.broker.connection.channel()

    def supports(self, delay_ms: int) -> bool:
        return delay_ms > 0 and delay_ms % self.resolution_ms == 0

    async def prepare_target(self, queue: str) -> None:
        """Whatever the topology needs ahead for copies to come back to ``queue``."""

    async def consume(
        self, queue: AbstractQueue, delay_ms: int, hooks: Hooks, *, fresh: bool = False
    ) -> str:
        """Consume ``queue``: a copy delayed by ``delay_ms`` on the first delivery."""
        raise NotImplementedError

    async def purge_copies(self) -> None:
        """Drop the copies the throughput rounds left waiting."""

    def queue_pattern(self) -> str:
        """A regular expression for the names of this topology's queues."""
        raise NotImplementedError

    async def teardown(self) -> None:
        await self.channel.close()
        await self.admin.close()

    async def purge(self, names: Sequence[str]) -> None:
        for name in names:
            queue = await self.admin.get_queue(name, ensure=False)
            await queue.purge()

    async def delete_queues(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                await self.admin.queue_delete(name)

    async def delete_exchanges(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(Exception):
                await self.admin.exchange_delete(name)


class LibrarySide(Side):
    """``Retrier`` with one topology."""

    def __init__(
        self, broker: Broker, prefix: str, topology: str, queue_type: str = "classic"
    ) -> None:
        super().__init__(broker, prefix)
        self.topology = topology
        self.queue_type = queue_type
        self.key = topology if topology != "ladder" else f"ladder {queue_type}"
        self._backoffs: dict[int, type[Backoff]] = {}
        self._placed: dict[str, Callable[[str | None], None]] = {}
        self._retriers: list[Retrier] = []
        self._exchanges: list[str] = []
        self.delay_queues: set[int] = set()

    def _delay_exchange(self) -> str:
        name = (
            f"{self.prefix}.per-delay.{uuid.uuid4().hex[:6]}"
            if self.topology == "per-delay"
            else self.prefix
        )
        self._exchanges.append(name)
        return name

    def _retrier(self) -> Retrier:
        retrier = Retrier(
            self.channel,
            topology=self.topology,  # type: ignore[arg-type]
            queue_type=self.queue_type,  # type: ignore[arg-type]
            delay_exchange=self._delay_exchange(),
        )
        publisher = retrier.publisher
        original = publisher.publish_copy
        placed = self._placed

        async def publish_copy(message: Any, plan: Any, **kwargs: Any) -> None:
            await original(message, plan, **kwargs)
            placed.get(plan.routing_key, _noop)(message.message_id)

        publisher.publish_copy = publish_copy  # type: ignore[method-assign]
        self._retriers.append(retrier)
        return retrier

    async def setup(self) -> None:
        await super().setup()
        self.retrier = self._retrier()
        self.ladder = (
            Ladder(self.prefix, self.queue_type)  # type: ignore[arg-type]
            if self.topology == "ladder"
            else None
        )
        # fails here when the broker cannot run the topology (no plugin, say)
        await self.retrier.publisher.declare()

    def backoff(self, delay_ms: int) -> type[Backoff]:
        backoff = self._backoffs.get(delay_ms)
        if backoff is None:
            backoff = self._backoffs[delay_ms] = backoff_class(
                schedule=(delay_ms,), limit=5, random_sigma=0, name=f"Bench{delay_ms}"
            )
        return backoff

    async def consume(
        self, queue: AbstractQueue, delay_ms: int, hooks: Hooks, *, fresh: bool = False
    ) -> str:
        backoff = self.backoff(delay_ms)
        self._placed[queue.name] = hooks.on_placed
        self.delay_queues.add(delay_ms)
        on_fail, on_back = hooks.on_fail, hooks.on_back

        async def handler(message: AbstractIncomingMessage) -> None:
            if RETRIES_HEADER in message.headers:
                on_back(message)
                return
            on_fail(message)
            raise backoff

        retrier = self._retrier() if fresh else self.retrier
        return await retrier.consume(queue, handler, backoff=backoff)

    async def purge_copies(self) -> None:
        if self.ladder is not None:
            await self.purge(self.ladder.queue_names)
        elif self.topology == "per-delay":
            await self.purge([DelayQueue(THROUGHPUT_DELAY_MS).name])

    def queue_pattern(self) -> str:
        if self.ladder is not None:
            return "^" + re.escape(self.ladder.prefix + ".")
        if self.topology == "per-delay":
            delays = "|".join(str(d) for d in sorted(self.delay_queues))
            return f"^backoff--({delays})ms$"
        return "^" + re.escape(self.prefix + ".")

    async def teardown(self) -> None:
        for retrier in self._retriers:
            await retrier.close()
        if self.ladder is not None:
            await self.delete_queues(self.ladder.queue_names)
            await self.delete_exchanges(
                [
                    *(self.ladder.level(i) for i in range(LADDER_LEVELS)),
                    self.ladder.deliver_exchange,
                    self.ladder.undeliverable,
                ]
            )
        elif self.topology == "per-delay":
            # the lateness runs' delay queues are named by delay alone (other
            # suites may share them): they expire by themselves, delay + 5 s on
            await self.delete_queues([DelayQueue(THROUGHPUT_DELAY_MS).name])
            await self.delete_exchanges(self._exchanges)
        else:
            await self.delete_exchanges([f"{self.prefix}.delayed"])
        await super().teardown()


class RelaySide(Side):
    """An aio-pika relay: consume, publish the copy (confirmed), ack."""

    mandatory = True

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        raise NotImplementedError

    def expiration(self, delay_ms: int) -> timedelta | None:
        return None

    def copy_headers(self, delay_ms: int) -> dict[str, Any]:
        """Headers the topology needs on the copy."""
        return {}

    async def ensure_delay(self, delay_ms: int) -> None:
        """Declare what copies of this delay need (before the clock starts)."""

    async def consume(
        self, queue: AbstractQueue, delay_ms: int, hooks: Hooks, *, fresh: bool = False
    ) -> str:
        await self.ensure_delay(delay_ms)
        exchange, routing_key = self.address(queue.name, delay_ms)
        expiration = self.expiration(delay_ms)
        extra = {RELAY_HEADER: 1, DELAY_HEADER: delay_ms, **self.copy_headers(delay_ms)}
        mandatory = self.mandatory
        on_fail, on_back, on_placed = hooks.on_fail, hooks.on_back, hooks.on_placed

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = message.headers
            if RELAY_HEADER in headers:
                on_back(message)
                await message.ack()
                return
            on_fail(message)
            copy = aio_pika.Message(
                message.body,
                headers={**headers, **extra},
                content_type=message.content_type,
                delivery_mode=message.delivery_mode,
                message_id=message.message_id,
                expiration=expiration,
            )
            await exchange.publish(copy, routing_key=routing_key, mandatory=mandatory)
            on_placed(message.message_id)
            await message.ack()

        return await queue.consume(on_message)


class RawSide(RelaySide):
    """bench/retry_throughput.py's raw loop: a headers exchange and a TTL queue."""

    key = "raw"
    lateness = False

    async def setup(self) -> None:
        await super().setup()
        self.exchange = await self.admin.declare_exchange(
            f"{self.prefix}.raw", aio_pika.ExchangeType.HEADERS, durable=True
        )
        self.delays: dict[int, str] = {}

    async def ensure_delay(self, delay_ms: int) -> None:
        if delay_ms in self.delays:
            return
        name = f"{self.prefix}.raw--{delay_ms}ms"
        queue = await self.admin.declare_queue(
            name, durable=True, arguments={"x-dead-letter-exchange": ""}
        )
        await queue.bind(
            self.exchange, arguments={DELAY_HEADER: delay_ms, "x-match": "any"}
        )
        self.delays[delay_ms] = name

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        return self.exchange, target

    def expiration(self, delay_ms: int) -> timedelta | None:
        return timedelta(milliseconds=delay_ms)

    async def purge_copies(self) -> None:
        await self.purge(list(self.delays.values()))

    def queue_pattern(self) -> str:
        return "^" + re.escape(f"{self.prefix}.raw--")

    async def teardown(self) -> None:
        await self.delete_queues(list(self.delays.values()))
        await self.delete_exchanges([self.exchange.name])
        await super().teardown()


class FloorSide(RelaySide):
    """The copy goes straight back to its queue: the lateness of no delay at all
    (client, broker and machine as they are just now)."""

    key = "floor (no delay)"

    def supports(self, delay_ms: int) -> bool:
        return delay_ms == 0

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        return self.channel.default_exchange, target

    def queue_pattern(self) -> str:
        return "^$"


class LadderRelaySide(RelaySide):
    """A relay into the library's ladder (names and keys from ``Ladder``): the
    same broker work as ``Retrier(topology="ladder")`` without the library."""

    def __init__(self, broker: Broker, prefix: str, queue_type: str) -> None:
        super().__init__(broker, prefix)
        self.queue_type = queue_type
        self.key = f"ladder relay {queue_type}"
        self.ladder = Ladder(f"{prefix}.relay", queue_type)  # type: ignore[arg-type]
        self._entries: dict[str, AbstractExchange] = {}

    async def setup(self) -> None:
        await super().setup()
        retrier = Retrier(
            self.channel,
            topology="ladder",
            queue_type=self.queue_type,  # type: ignore[arg-type]
            delay_exchange=self.ladder.delay_exchange,
        )
        await retrier.publisher.declare()
        await retrier.close()

    async def prepare_target(self, queue: str) -> None:
        binding = self.ladder.target_binding(queue)
        target = await self.admin.get_queue(queue, ensure=False)
        await target.bind(binding.source, binding.routing_key)

    async def ensure_delay(self, delay_ms: int) -> None:
        name = self.ladder.entry(delay_ms)
        if name not in self._entries:
            self._entries[name] = await self.channel.get_exchange(name, ensure=False)

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        entry = self._entries[self.ladder.entry(delay_ms)]
        return entry, self.ladder.routing_key(delay_ms, target)

    async def purge_copies(self) -> None:
        await self.purge(self.ladder.queue_names)

    def queue_pattern(self) -> str:
        return "^" + re.escape(self.ladder.prefix + ".")

    async def teardown(self) -> None:
        ladder = self.ladder
        await self.delete_queues(ladder.queue_names)
        await self.delete_exchanges(
            [
                *(ladder.level(i) for i in range(LADDER_LEVELS)),
                ladder.deliver_exchange,
                ladder.undeliverable,
            ]
        )
        await super().teardown()


class HeadersLadderSide(RelaySide):
    """A relay into the prototype ladder of bench/ladder_prototype.py (headers
    exchanges chained by alternate exchanges; ``--prototype``)."""

    def __init__(self, broker: Broker, prefix: str, queue_type: str) -> None:
        super().__init__(broker, prefix)
        self.queue_type = queue_type
        self.key = f"headers ladder {queue_type}"
        self.ladder = HeadersLadder(f"{prefix}.proto", queue_type)
        self._entries: dict[str, AbstractExchange] = {}

    async def setup(self) -> None:
        await super().setup()
        await self.ladder.declare(self.admin)

    async def prepare_target(self, queue: str) -> None:
        target = await self.admin.get_queue(queue, ensure=False)
        await target.bind(self.ladder.deliver_exchange, queue)

    async def ensure_delay(self, delay_ms: int) -> None:
        name = self.ladder.entry(delay_ms)
        if name not in self._entries:
            self._entries[name] = await self.channel.get_exchange(name, ensure=False)

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        return self._entries[self.ladder.entry(delay_ms)], target

    def copy_headers(self, delay_ms: int) -> dict[str, Any]:
        return self.ladder.headers(delay_ms)

    async def purge_copies(self) -> None:
        await self.purge(self.ladder.queue_names)

    def queue_pattern(self) -> str:
        return "^" + re.escape(self.ladder.prefix + ".")

    async def teardown(self) -> None:
        await self.delete_queues(self.ladder.queue_names)
        await self.delete_exchanges(self.ladder.exchange_names)
        await super().teardown()


class CelerySide(RelaySide):
    """Celery 5.5's ladder, declared and bound by kombu, entered at level 27."""

    resolution_ms = 1000
    mandatory = False  # Celery publishes without it

    def __init__(self, broker: Broker, prefix: str, queue_type: str) -> None:
        super().__init__(broker, prefix)
        self.queue_type = queue_type
        self.key = f"celery {queue_type}"
        self.kprefix = f"{prefix}.celery-{queue_type}"
        self._kombu_lock = asyncio.Lock()

    @staticmethod
    def kombu_url(url: str) -> str:
        # kombu reads the vhost from the path after the first "/"
        parts = urllib.parse.urlsplit(url)
        vhost = urllib.parse.unquote(parts.path[1:]) or "/"
        return f"amqp://{parts.netloc}/{urllib.parse.quote(vhost, safe='')}"

    async def setup(self) -> None:
        await super().setup()
        assert celery_ladder is not None
        self.kombu = KombuConnection(self.kombu_url(self.broker.url))
        self.target_exchange = KombuExchange(
            f"{self.kprefix}.target", type="topic", durable=True
        )

        def declare() -> None:
            celery_ladder.declare_native_delayed_delivery_exchanges_and_queues(
                self.kombu, self.queue_type, prefix=self.kprefix
            )
            self.target_exchange.bind(self.kombu.default_channel).declare()

        await asyncio.to_thread(declare)
        self.entry = await self.channel.get_exchange(
            celery_ladder.level_name(celery_ladder.MAX_LEVEL, self.kprefix),
            ensure=False,
        )

    def level_names(self) -> list[str]:
        assert celery_ladder is not None
        return [
            celery_ladder.level_name(level, self.kprefix)
            for level in range(celery_ladder.MAX_NUMBER_OF_BITS_TO_USE)
        ]

    async def prepare_target(self, queue: str) -> None:
        assert celery_ladder is not None
        target = KombuQueue(queue, exchange=self.target_exchange, routing_key=queue)
        async with self._kombu_lock:
            await asyncio.to_thread(
                celery_ladder.bind_queue_to_native_delayed_delivery_exchange,
                self.kombu,
                target,
                prefix=self.kprefix,
            )

    def address(self, target: str, delay_ms: int) -> tuple[AbstractExchange, str]:
        assert celery_ladder is not None
        seconds = delay_ms // 1000
        return self.entry, celery_ladder.calculate_routing_key(seconds, target)

    async def purge_copies(self) -> None:
        await self.purge(self.level_names())

    def queue_pattern(self) -> str:
        return "^" + re.escape(f"{self.kprefix}_celery_delayed_")

    async def teardown(self) -> None:
        assert celery_ladder is not None
        names = self.level_names()
        await self.delete_queues(names)
        await self.delete_exchanges(
            [
                *names,
                f"{self.kprefix}_{celery_ladder.CELERY_DELAYED_DELIVERY_EXCHANGE}",
                self.target_exchange.name,
            ]
        )
        await asyncio.to_thread(self.kombu.release)
        await super().teardown()


# -- one run of each kind -------------------------------------------------------------


class Finish:
    """Counts events and tells when all ``expected`` have happened."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.event = asyncio.Event()
        if expected <= 0:
            self.event.set()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.event.set()

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def preload(channel: AbstractChannel, queue: str, count: int, tag: str) -> None:
    """Publish ``count`` persistent messages to ``queue``, confirmed, in batches."""
    exchange = channel.default_exchange
    batch = 500
    for start in range(0, count, batch):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        BODY,
                        content_type="application/json",
                        delivery_mode=PERSISTENT,
                        message_id=f"{tag}-{i}",
                    ),
                    routing_key=queue,
                )
                for i in range(start, min(start + batch, count))
            )
        )


async def target_queue(side: Side, label: str) -> AbstractQueue:
    queue = await side.channel.declare_queue(unique(label), durable=True)
    await side.prepare_target(queue.name)
    return queue


@dataclass(frozen=True)
class Round:
    rate: float
    """copies placed (confirmed) per second"""
    cpu_us: float
    """this process's CPU time per copy"""


async def throughput_round(side: Side, messages: int) -> Round:
    queue = await target_queue(side, "thr")
    try:
        await preload(side.channel, queue.name, messages, "thr")
        placed = Finish(messages)
        hooks = Hooks(on_fail=_noop, on_back=_noop, on_placed=lambda _: placed.one())
        cpu_started = time.process_time()
        started = time.perf_counter()
        tag = await side.consume(queue, THROUGHPUT_DELAY_MS, hooks)
        if not await placed.wait(TIMEOUT_S):
            msg = f"{side.title}: {placed.count} of {messages} copies in {TIMEOUT_S} s"
            raise RuntimeError(msg)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        await queue.cancel(tag)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await side.purge_copies()
    return Round(rate=messages / elapsed, cpu_us=cpu / messages * 1e6)


@dataclass
class Lateness:
    """One run's lateness beyond the nominal delay, in ms."""

    values: list[float]
    expected: int
    early: int = 0
    placing: list[float] = field(default_factory=list)
    """ms from the first delivery to the copy's confirm"""
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    """the machine's 1-minute load average when the run started"""

    @property
    def lost(self) -> int:
        return self.expected - len(self.values)

    @property
    def p50(self) -> float:
        return percentile(self.values, 50)

    @property
    def p99(self) -> float:
        return percentile(self.values, 99)

    @property
    def max(self) -> float:
        return max(self.values)


def lateness_hooks(delay_ms: int, expected: int) -> tuple[Hooks, Lateness, Finish]:
    failed_at: dict[str | None, float] = {}
    result = Lateness([], expected)
    back = Finish(expected)
    clock = time.perf_counter

    def on_fail(message: AbstractIncomingMessage) -> None:
        failed_at[message.message_id] = clock()

    def on_placed(message_id: str | None) -> None:
        failed = failed_at.get(message_id)
        if failed is not None:
            result.placing.append((clock() - failed) * 1000)

    def on_back(message: AbstractIncomingMessage) -> None:
        now = clock()
        failed = failed_at.pop(message.message_id, None)
        if failed is None:
            return
        late = (now - failed) * 1000 - delay_ms
        result.values.append(late)
        if late < 0:
            result.early += 1
        back.one()

    return Hooks(on_fail, on_back, on_placed), result, back


async def lateness_run(
    side: Side, delay_ms: int, count: int, start_at: float
) -> Lateness:
    """``count`` messages fail at RATE per second from ``start_at``; their lateness."""
    queue = await target_queue(side, "late")
    try:
        hooks, result, back = lateness_hooks(delay_ms, count)
        tag = await side.consume(queue, delay_ms, hooks)
        exchange = side.channel.default_exchange
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        started = time.monotonic()
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / RATE - time.monotonic()))
            await exchange.publish(
                aio_pika.Message(
                    BODY,
                    content_type="application/json",
                    delivery_mode=PERSISTENT,
                    message_id=f"late-{i}",
                ),
                routing_key=queue.name,
            )
        await back.wait(delay_ms / 1000 + 30)
        await queue.cancel(tag)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    return result


async def burst_run(side: Side) -> tuple[Lateness, bool]:
    """BURST messages fail at once on a fresh consumer; (lateness, queue was new)."""
    queue = await target_queue(side, "burst")
    fresh_queue = True
    try:
        await preload(side.channel, queue.name, BURST, "burst")
        if isinstance(side, LibrarySide) and side.topology == "per-delay":
            name = DelayQueue(BURST_DELAY_MS).name
            fresh_queue = not await asyncio.to_thread(
                side.broker.api.queue_exists, name
            )
        delay_ms = 0 if isinstance(side, FloorSide) else BURST_DELAY_MS
        hooks, result, back = lateness_hooks(delay_ms, BURST)
        tag = await side.consume(queue, delay_ms, hooks, fresh=True)
        await back.wait(BURST_DELAY_MS / 1000 + 30)
        await queue.cancel(tag)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
    return result, fresh_queue


# -- packing the lateness runs --------------------------------------------------------


@dataclass
class Job:
    side: Side
    delay_ms: int
    count: int
    start: float = 0.0
    result: Lateness | None = None

    def windows(self) -> list[tuple[float, float]]:
        """When it sends and when its copies come back, relative to its start."""
        sending = self.count / RATE
        send = (0.0, sending + 0.5)
        tail = 1.5 + self.delay_ms / 1000 * 0.002
        back = (self.delay_ms / 1000, self.delay_ms / 1000 + sending + tail)
        if back[0] <= send[1]:
            return [(0.0, back[1])]
        return [send, back]


def pack(jobs: list[Job]) -> float:
    """Give each job the earliest start at which none of its windows overlaps
    another job's; longest delays first, so that short runs fill their waits.
    Returns the total length."""
    busy: list[tuple[float, float]] = []
    for job in sorted(jobs, key=lambda j: -j.delay_ms):
        windows = job.windows()
        candidates = sorted(
            {0.0} | {end - w0 for _, end in busy for w0, _ in windows if end >= w0}
        )
        for start in candidates:
            placed = [(start + a, start + b) for a, b in windows]
            if all(b <= s or a >= e for a, b in placed for s, e in busy):
                break
        job.start = start
        busy += placed
    return max(end for _, end in busy) if busy else 0.0


# -- memory with a million copies waiting ---------------------------------------------


@dataclass
class MemoryRow:
    variant: str
    copies: int
    before_mb: float
    after_mb: float
    publish_rate: float
    breakdown: dict[str, float] = field(default_factory=dict)

    @property
    def delta_mb(self) -> float:
        return self.after_mb - self.before_mb


FAULTBROKER = [str(ROOT / "scripts" / "faultbroker.sh")]


def faultbroker(*args: str) -> None:
    subprocess.run([*FAULTBROKER, *args, "--version", "3"], check=True)


def faultbroker_up() -> bool:
    return (
        subprocess.run(
            [*FAULTBROKER, "status", "--version", "3"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


async def settled_memory(
    api: Api, quiet_s: float = 3.0
) -> tuple[float, dict[str, Any]]:
    """The node's mem_used (MB) once two readings ``quiet_s`` apart agree to 2%."""
    previous = -1.0
    deadline = time.monotonic() + 120
    node: dict[str, Any] = {}
    while time.monotonic() < deadline:
        await asyncio.sleep(quiet_s)
        node = (await api.aget("/api/nodes"))[0]
        if "mem_used" not in node:  # no statistics yet, just after start
            continue
        used = node["mem_used"] / 2**20
        if previous > 0 and abs(used - previous) <= 0.02 * previous:
            return used, node
        previous = used
    return previous, node


async def publish_many(
    channel: AbstractChannel,
    exchange: str,
    routing_key: str,
    properties: dict[str, Any],
    count: int,
    window: int = 2000,
) -> float:
    """Publish ``count`` copies (confirmed, ``window`` in flight); copies/s."""
    target = await channel.get_exchange(exchange, ensure=False) if exchange else None
    target = target or channel.default_exchange
    started = time.perf_counter()
    for begin in range(0, count, window):
        await asyncio.gather(
            *(
                target.publish(
                    aio_pika.Message(BODY, message_id=f"m{i}", **properties),
                    routing_key=routing_key,
                )
                for i in range(begin, min(begin + window, count))
            )
        )
        if begin and begin % 100_000 == 0:
            print(f"    {begin} published", flush=True)
    return count / (time.perf_counter() - started)


async def memory_variant(
    url: str, variant: str, copies: int, delay_ms: int
) -> MemoryRow:
    """Publish ``copies`` copies delayed by ``delay_ms`` through ``variant``; the
    node's memory before and after. Deletes everything it declared."""
    api = Api(url)
    connection = await aio_pika.connect_robust(url, timeout=10)
    prefix = unique("memory")
    queues: list[str] = []
    exchanges: list[str] = []
    try:
        channel = await connection.channel()
        target = await channel.declare_queue(f"{prefix}.target", durable=True)
        queues.append(target.name)
        backoff = backoff_class(schedule=(delay_ms,), limit=5, random_sigma=0)
        topology, _, queue_type = variant.partition(" ")
        queue_type, _, policy = queue_type.partition(" ")
        plan = plan_retry(
            backoff(),
            {},
            target_queue=target.name,
            delay_exchange=prefix,
            topology=topology,  # type: ignore[arg-type]
        )
        properties: dict[str, Any] = {
            "headers": plan.headers,
            "delivery_mode": PERSISTENT,
            "content_type": "application/json",
        }
        if topology == "ladder":
            ladder = Ladder(prefix, queue_type)  # type: ignore[arg-type]
            queues += ladder.queue_names
            exchanges += [
                *(ladder.level(i) for i in range(LADDER_LEVELS)),
                ladder.deliver_exchange,
                ladder.undeliverable,
            ]
            if policy:
                vhost = urllib.parse.quote(api.vhost, safe="")
                await asyncio.to_thread(
                    api.send,
                    "PUT",
                    f"/api/policies/{vhost}/{prefix}",
                    {
                        "pattern": "^" + re.escape(ladder.prefix + "."),
                        "definition": POLICIES[policy],
                        "apply-to": "queues",
                        "priority": 10,
                    },
                )
            retrier = Retrier(
                channel,
                topology="ladder",
                queue_type=queue_type,  # type: ignore[arg-type]
                delay_exchange=prefix,
            )
            await retrier.publisher.declare()
            await retrier.close()
            binding = ladder.target_binding(target.name)
            await target.bind(binding.source, binding.routing_key)
            routing_key = ladder.routing_key(delay_ms, target.name)
            # The copies go straight into the level they enter at, through a
            # direct exchange bound with their very routing key: stored exactly
            # as the ladder stores them, without the topic match on the way in
            # (a fill at a few thousand copies/s instead of several hundred).
            fill = await channel.declare_exchange(
                f"{prefix}.fill", aio_pika.ExchangeType.DIRECT, durable=True
            )
            exchanges.append(fill.name)
            entry = await channel.get_queue(ladder.entry(delay_ms), ensure=False)
            await entry.bind(fill, routing_key)
            exchange = fill.name
        else:
            queue = DelayQueue(delay_ms, prefix)
            queues.append(queue.name)
            exchanges.append(prefix)
            delay_exchange = await channel.declare_exchange(
                prefix, aio_pika.ExchangeType.HEADERS, durable=True
            )
            delay_queue = await channel.declare_queue(
                queue.name, durable=True, arguments=queue.arguments
            )
            await delay_queue.bind(delay_exchange, arguments=queue.binding_arguments)
            exchange, routing_key = delay_exchange.name, target.name
            properties["expiration"] = timedelta(milliseconds=delay_ms)
        if policy:
            await asyncio.sleep(2)  # the policy reaches the queues
            info = await api.aget(
                f"/api/queues/{urllib.parse.quote(api.vhost, safe='')}/"
                + urllib.parse.quote(ladder.entry(delay_ms), safe="")
            )
            print(
                f"  {variant}: entry queue's policy "
                + str(info.get("effective_policy_definition"))
            )
        before, _ = await settled_memory(api)
        print(f"  {variant}: {before:.0f} MB before; publishing {copies}", flush=True)
        confirm_channel = await connection.channel(publisher_confirms=True)
        rate = await publish_many(
            confirm_channel, exchange, routing_key, properties, copies
        )
        after, node = await settled_memory(api, quiet_s=5.0)
        breakdown: dict[str, float] = {}
        with contextlib.suppress(Exception):
            name = urllib.parse.quote(node["name"])
            memory = (await api.aget(f"/api/nodes/{name}/memory"))["memory"]
            breakdown = {
                key: value / 2**20
                for key, value in memory.items()
                if isinstance(value, int) and value > 20 * 2**20 and key != "total"
            }
        print(
            f"  {variant}: {after:.0f} MB with {copies} copies waiting "
            f"({rate:.0f} copies/s published)",
            flush=True,
        )
        return MemoryRow(variant, copies, before, after, rate, breakdown)
    finally:
        with contextlib.suppress(Exception):
            vhost = urllib.parse.quote(api.vhost, safe="")
            await asyncio.to_thread(
                api.send, "DELETE", f"/api/policies/{vhost}/{prefix}"
            )
        with contextlib.suppress(Exception):
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)
        await connection.close()


VARIANTS = (
    "ladder classic",
    "ladder quorum",
    "per-delay",
    "ladder classic lazy",
    "ladder classic v2",
)
"""``lazy`` and ``v2``: the ladder's queues under a policy (``queue-mode: lazy``,
``queue-version: 2``) that RabbitMQ 3.10 offers for classic queues."""
POLICIES = {"lazy": {"queue-mode": "lazy"}, "v2": {"queue-version": 2}}


async def memory_test(
    url: str, variants: Sequence[str], copies: int, delay_ms: int
) -> list[MemoryRow]:
    """On ``url``'s node; the default (scripts/faultbroker.sh's 3.10 node) is
    started here, fresh for each variant, and stopped (its data deleted)."""
    if url != MEMORY_URL:
        return [await memory_variant(url, v, copies, delay_ms) for v in variants]
    if faultbroker_up():
        print(
            "memory: skipped: the node on 5690 is up already (the fault suite's?); "
            "stop it (scripts/faultbroker.sh stop) or pass --memory-url",
            flush=True,
        )
        return []
    rows = []
    try:
        for variant in variants:
            # a fresh node per variant: the same baseline, nothing left over
            faultbroker("start")
            try:
                rows.append(await memory_variant(url, variant, copies, delay_ms))
            finally:
                faultbroker("stop")  # deletes the node's data
    finally:
        if faultbroker_up():
            faultbroker("stop")
    return rows


# -- driver ---------------------------------------------------------------------------


@dataclass
class Settings:
    messages: int
    rounds: int
    seconds: float
    reps: int
    long_reps: int
    delays: tuple[int, ...]
    burst_reps: int


QUICK = Settings(
    messages=2000,
    rounds=3,
    seconds=3.0,
    reps=1,
    long_reps=1,
    delays=(100, 1000, 7000),
    burst_reps=3,
)
FULL = Settings(
    messages=4000,
    rounds=5,
    seconds=5.0,
    reps=3,
    long_reps=1,
    delays=(100, 1000, 7000, 60_000),
    burst_reps=5,
)
SECTIONS = ("throughput", "lateness", "burst", "queues")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="no 60 s delay, fewer runs"
    )
    parser.add_argument(
        "--memory", action="store_true", help="also 1M copies on a node of its own"
    )
    parser.add_argument("--memory-copies", type=int, default=1_000_000)
    parser.add_argument(
        "--memory-url",
        default=MEMORY_URL,
        help="a node of its own for --memory (default: scripts/faultbroker.sh's 3.10 "
        "node on 5690, started and stopped here)",
    )
    parser.add_argument(
        "--memory-variants",
        default=",".join(VARIANTS[:3]),
        help=f"comma-separated, of {','.join(VARIANTS)} (default: the first three)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--sides",
        default="",
        help="comma-separated keys to run (e.g. 'raw,ladder classic'); default all",
    )
    parser.add_argument(
        "--relays",
        action="store_true",
        help="also a raw relay into the library's ladder (broker cost without "
        "the library)",
    )
    parser.add_argument(
        "--prototype",
        action="store_true",
        help="also relays into the prototype ladder of bench/ladder_prototype.py "
        "(headers exchanges chained by alternate exchanges) and into the "
        "library's ladder",
    )
    parser.add_argument("--messages", type=int, help="per throughput round")
    parser.add_argument("--rounds", type=int, help="throughput rounds per side")
    parser.add_argument("--reps", type=int, help="lateness runs per side and delay")
    parser.add_argument("--burst-reps", type=int)
    return parser.parse_args(argv)


async def connect(url: str) -> Broker:
    connection = await aio_pika.connect_robust(url, timeout=10)
    api = Api(url)
    version = await asyncio.to_thread(api.version)
    return Broker(url, connection, api, version)


async def make_sides(args: argparse.Namespace, prefix: str) -> list[Side]:
    main = await connect(AMQP_URL)
    sides: list[Side] = [
        RawSide(main, prefix),
        FloorSide(main, prefix),
        LibrarySide(main, prefix, "per-delay"),
        LibrarySide(main, prefix, "ladder", "classic"),
        LibrarySide(main, prefix, "ladder", "quorum"),
    ]
    if celery_ladder is None or "prefix" not in str(
        celery_ladder.declare_native_delayed_delivery_exchanges_and_queues.__code__.co_varnames
    ):
        print("celery: skipped (needs kombu >= 5.7: use .venv-bench)", flush=True)
    else:
        sides += [
            CelerySide(main, prefix, "classic"),
            CelerySide(main, prefix, "quorum"),
        ]
    if args.relays or args.prototype:
        sides += [LadderRelaySide(main, prefix, "classic")]
    if args.prototype:
        sides += [
            HeadersLadderSide(main, prefix, "classic"),
            HeadersLadderSide(main, prefix, "quorum"),
        ]
    if PLUGIN_URL:
        plugin = await connect(PLUGIN_URL)
        sides += [RawSide(plugin, prefix), LibrarySide(plugin, prefix, "plugin")]
    else:
        print("plugin: skipped (AIO_BACKOFF_PLUGIN_AMQP_URL is not set)", flush=True)
    if args.sides:
        wanted = {key.strip() for key in args.sides.split(",")}
        sides = [side for side in sides if side.key in wanted]
    ready: list[Side] = []
    for side in sides:
        try:
            await side.setup()
        except CopyNotPlaced as error:
            print(f"{side.key}: skipped ({error})", flush=True)
            continue
        ready.append(side)
    if not any(side.key == "plugin" for side in ready):
        ready = [
            s for s in ready if not (s.key == "raw" and s.broker.url == PLUGIN_URL)
        ]
    return ready


def side_name(side: Side, sides: Sequence[Side]) -> str:
    brokers = {s.broker.url for s in sides}
    if len(brokers) > 1 and side.broker.url != AMQP_URL:
        return f"{side.key} ({side.broker.label})"
    return side.key


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


async def run_throughput(
    sides: list[Side], settings: Settings
) -> dict[Side, list[tuple[Round, float]]]:
    print(
        f"\n== throughput: {settings.messages} copies per round, {settings.rounds} "
        f"rounds per side (+1 warm-up), delay {THROUGHPUT_DELAY_MS} ms",
        flush=True,
    )
    sides = [side for side in sides if not isinstance(side, FloorSide)]
    for side in sides:
        await throughput_round(side, min(500, settings.messages))
    results: dict[Side, list[tuple[Round, float]]] = {side: [] for side in sides}
    for index in range(settings.rounds):
        shift = index % len(sides)
        order = sides[shift:] + sides[:shift]
        rounds = {
            side: await throughput_round(side, settings.messages) for side in order
        }
        line = []
        for side in sides:
            raw = next(
                r
                for s, r in rounds.items()
                if s.key == "raw" and s.broker is side.broker
            )
            results[side].append((rounds[side], rounds[side].rate / raw.rate))
            line.append(f"{side_name(side, sides)} {rounds[side].rate:.0f}")
        print(f"round {index + 1}: " + ", ".join(line) + " copies/s", flush=True)
    return results


def describe(side: Side, sides: Sequence[Side], r: Lateness) -> str:
    if not r.values:
        return f"{side_name(side, sides):>24s}: nothing came back"
    placing = percentile(r.placing, 99) if r.placing else None
    return (
        f"{side_name(side, sides):>24s}: p50 {r.p50:.1f} p99 {r.p99:.1f} "
        f"max {r.max:.1f}; placed p99 {fmt(placing)}; load {r.load:.1f}"
        + (f" LOST {r.lost}" if r.lost else "")
        + (f" early {r.early}" if r.early else "")
    )


async def watch_queues(sides: Sequence[Side], seen: dict[Side, int]) -> None:
    """Every few seconds: the most queues each topology had at once."""
    while True:
        for side in sides:
            if side.key in ("raw", FloorSide.key):
                continue
            with contextlib.suppress(Exception):
                names = await asyncio.to_thread(
                    side.broker.api.queue_names, side.queue_pattern()
                )
                seen[side] = max(seen.get(side, 0), len(names))
        await asyncio.sleep(3.0)


async def run_lateness(
    sides: list[Side], settings: Settings, queues_seen: dict[Side, int]
) -> dict[tuple[Side, int], list[Lateness]]:
    count = int(settings.seconds * RATE)
    jobs = [
        Job(side, delay, count)
        for rep in range(max(settings.reps, settings.long_reps))
        for delay in (0, *settings.delays)
        for side in sides
        if side.lateness
        and side.supports(delay)
        and rep < (settings.long_reps if delay >= 30_000 else settings.reps)
    ]
    length = pack(jobs)
    print(
        f"\n== lateness: {count} messages failing at {RATE:.0f}/s per run, "
        f"{len(jobs)} runs packed into {length:.0f} s",
        flush=True,
    )
    origin = time.monotonic() + 2.0

    async def run(job: Job) -> None:
        await asyncio.sleep(max(0.0, origin + job.start - 1.0 - time.monotonic()))
        job.result = await lateness_run(
            job.side, job.delay_ms, job.count, origin + job.start
        )
        print(f"  {job.delay_ms:>6d} ms {describe(job.side, sides, job.result)}")

    watch = asyncio.create_task(watch_queues(sides, queues_seen))
    try:
        await asyncio.gather(*(run(job) for job in jobs))
    finally:
        watch.cancel()
    results: dict[tuple[Side, int], list[Lateness]] = {}
    for job in jobs:
        assert job.result is not None
        results.setdefault((job.side, job.delay_ms), []).append(job.result)
    return results


async def run_burst(
    sides: list[Side], settings: Settings
) -> dict[Side, list[tuple[Lateness, bool]]]:
    print(
        f"\n== burst: {BURST} messages fail at once, {BURST_DELAY_MS} ms delay, "
        f"{settings.burst_reps} runs per side",
        flush=True,
    )
    results: dict[Side, list[tuple[Lateness, bool]]] = {}
    eligible = [
        s
        for s in sides
        if s.lateness and (s.supports(BURST_DELAY_MS) or isinstance(s, FloorSide))
    ]
    for index in range(settings.burst_reps):
        shift = index % len(eligible)
        for side in eligible[shift:] + eligible[:shift]:
            result, fresh = await burst_run(side)
            results.setdefault(side, []).append((result, fresh))
            print(
                f"  {describe(side, sides, result)}"
                + ("" if fresh else " (delay queue existed)"),
                flush=True,
            )
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


async def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    settings = QUICK if args.quick else FULL
    for name in ("messages", "rounds", "reps", "burst_reps"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    prefix = unique("run")
    started = time.monotonic()
    print(
        f"topologies ({'quick' if args.quick else 'full'} mode), broker "
        f"{AMQP_URL.rsplit('@', 1)[-1]}, prefix {prefix}",
        flush=True,
    )
    sides = await make_sides(args, prefix) if sections else []
    throughput: dict[Side, list[tuple[Round, float]]] = {}
    lateness: dict[tuple[Side, int], list[Lateness]] = {}
    burst: dict[Side, list[tuple[Lateness, bool]]] = {}
    queues: dict[Side, int] = {}
    queues_seen: dict[Side, int] = {}
    memory: list[MemoryRow] = []
    try:
        if "throughput" in sections:
            throughput = await run_throughput(sides, settings)
        if "lateness" in sections:
            lateness = await run_lateness(sides, settings, queues_seen)
        if "burst" in sections:
            burst = await run_burst(sides, settings)
        if "queues" in sections:
            for side in sides:
                if side.key not in ("raw", FloorSide.key):
                    names = await asyncio.to_thread(
                        side.broker.api.queue_names, side.queue_pattern()
                    )
                    queues[side] = len(names)
    finally:
        for side in sides:
            try:
                await side.teardown()
            except Exception as error:
                print(f"{side.key}: teardown failed: {error!r}", flush=True)
        for connection in {side.broker.connection for side in sides}:
            await connection.close()
    if args.memory:
        print(f"\n== memory: {args.memory_copies} copies waiting 1 hour", flush=True)
        variants = [v.strip() for v in args.memory_variants.split(",") if v.strip()]
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            print(f"--memory-variants: unknown {sorted(unknown)}; known: {VARIANTS}")
            return 2
        memory = await memory_test(
            args.memory_url, variants, args.memory_copies, 3_600_000
        )

    counts = {side: (queues_seen.get(side, 0), n) for side, n in queues.items()}
    report(sides, settings, throughput, lateness, burst, counts, memory)
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


def report(
    sides: list[Side],
    settings: Settings,
    throughput: dict[Side, list[tuple[Round, float]]],
    lateness: dict[tuple[Side, int], list[Lateness]],
    burst: dict[Side, list[tuple[Lateness, bool]]],
    queues: dict[Side, tuple[int, int]],
    memory: list[MemoryRow],
) -> None:
    per_delay = next((s for s in sides if s.key == "per-delay"), None)
    targets: list[str] = []

    def target(
        what: str, value: float, limit: float, unit: str, *, above: bool = False
    ) -> None:
        met = value >= limit if above else value <= limit
        sign = ">=" if above else "<="
        targets.append(
            f"{what}: {value:.{3 if unit == '' else 1}f}{unit} (target {sign} {limit:g}"
            f"{unit}): " + ("met" if met else "MISSED")
        )

    if throughput or queues:
        print(
            "\n### Throughput and queues (copies/s: medians of "
            f"{settings.rounds} rounds; ratios: medians of the rounds' ratios; "
            + "queues: most at once during the lateness runs / after all runs)\n"
        )
        print("| topology | copies/s | CPU µs/copy | ÷ raw | ÷ per-delay | queues |")
        print("|---|---|---|---|---|---|")
        for side in sides:
            if isinstance(side, FloorSide):
                continue
            rounds = throughput.get(side, [])
            cells = ["", "", "", ""]
            if rounds:
                vs_pd = None
                if per_delay is not None and side.broker is per_delay.broker:
                    vs_pd = median(
                        [
                            r.rate / p.rate
                            for (r, _), (p, _) in zip(
                                rounds, throughput[per_delay], strict=True
                            )
                        ]
                    )
                cells = [
                    f"{median([r.rate for r, _ in rounds]):.0f}",
                    f"{median([r.cpu_us for r, _ in rounds]):.0f}",
                    f"{median([ratio for _, ratio in rounds]):.3f}",
                    fmt(vs_pd, 3),
                ]
                if side.key.startswith("ladder") and vs_pd is not None:
                    target(
                        f"{side.key} throughput / per-delay", vs_pd, 0.9, "", above=True
                    )
            count = queues.get(side)
            cells.append(f"{count[0]} / {count[1]}" if count else "")
            print(f"| {side_name(side, sides)} | " + " | ".join(cells) + " |")
    if lateness:
        reps = f"medians of {settings.reps} runs" if settings.reps > 1 else "one run"
        print(
            "\n### Lateness beyond the delay, ms: p50 / p99 "
            f"({int(settings.seconds * RATE)} messages failing at {RATE:.0f}/s per "
            f"run; {reps} per cell"
            + (", one run at 60 s" if 60_000 in settings.delays else "")
            + ")\n"
        )
        delays = settings.delays
        print("| topology | " + " | ".join(f"{d / 1000:g} s" for d in delays) + " |")
        print("|---" * (len(delays) + 1) + "|")
        for side in sides:
            if not side.lateness or isinstance(side, FloorSide):
                continue
            cells = []
            for delay in delays:
                runs = [r for r in lateness.get((side, delay), []) if r.values]
                if not runs:
                    cells.append("n/a")
                    continue
                p50 = median([r.p50 for r in runs])
                p99 = median([r.p99 for r in runs])
                lost = sum(r.lost for r in lateness[(side, delay)])
                cells.append(
                    f"{p50:.1f} / {p99:.1f}" + (f" ({lost} lost)" if lost else "")
                )
                if side.key.startswith("ladder") and delay <= 10_000:
                    target(
                        f"{side.key} lateness p99 at {delay / 1000:g} s", p99, 10, " ms"
                    )
            print(f"| {side_name(side, sides)} | " + " | ".join(cells) + " |")
        floor = [
            r
            for s in sides
            if isinstance(s, FloorSide)
            for r in lateness.get((s, 0), [])
        ]
        loads = [r.load for runs in lateness.values() for r in runs]
        if floor:
            p50 = median([r.p50 for r in floor])
            p99 = median([r.p99 for r in floor])
            print(
                "\nThe floor (a relay sending the copy straight back, no delay): "
                f"p50 {p50:.1f} / p99 {p99:.1f} ms. Load average during the runs: "
                f"{min(loads):.1f} to {max(loads):.1f}."
            )
    if burst:
        print(
            f"\n### Burst: {BURST} messages fail at once, {BURST_DELAY_MS / 1000:g} s "
            f"delay, on a fresh consumer; ms, medians of {settings.burst_reps} runs\n"
        )
        print("| topology | lateness p50 | p99 | max | copy placed (p99) |")
        print("|---|---|---|---|---|")
        for side, runs in burst.items():
            good = [r for r, _ in runs if r.values]
            p99 = median([r.p99 for r in good])
            placed = median([percentile(r.placing, 99) for r in good if r.placing])
            note = ""
            if isinstance(side, LibrarySide) and side.topology == "per-delay":
                fresh = sum(1 for _, f in runs if f)
                note = f" (delay queue new in {fresh} of {len(runs)})"
            print(
                f"| {side_name(side, sides)}{note} | "
                f"{median([r.p50 for r in good]):.1f} | {p99:.1f} | "
                f"{median([r.max for r in good]):.1f} | {placed:.1f} |"
            )
            if side.key.startswith("ladder"):
                target(f"{side.key} burst lateness p99", p99, 10, " ms")
    if memory:
        print(
            "\n### Broker memory with copies waiting 1 hour (a fresh 3.10 node each)\n"
        )
        print(
            "| topology | copies | mem_used before | with the copies | growth | "
            "biggest parts (MB) |"
        )
        print("|---|---|---|---|---|---|")
        for row in memory:
            parts = ", ".join(
                f"{k} {v:.0f}"
                for k, v in sorted(row.breakdown.items(), key=lambda kv: -kv[1])[:3]
            )
            print(
                f"| {row.variant} | {row.copies} | {row.before_mb:.0f} MB | "
                f"{row.after_mb:.0f} MB | {row.delta_mb:.0f} MB | {parts} |"
            )
            if row.variant.startswith("ladder"):
                target(
                    f"{row.variant} memory with {row.copies} copies",
                    row.after_mb,
                    1024,
                    " MB",
                )
    for side, (most, _after) in queues.items():
        if side.key.startswith("ladder"):
            fixed = most == LADDER_LEVELS + 1
            targets.append(
                f"{side.key} queues: {most} whatever the delays (target: fixed, "
                f"{LADDER_LEVELS + 1}): " + ("met" if fixed else "MISSED")
            )
    if targets:
        print("\nTargets:")
        for line in targets:
            print(f"- {line}")


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
