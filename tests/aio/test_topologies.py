"""The delay topologies on real brokers: the ladder, per-delay and the plugin.

Every test has a delay exchange of its own (``test.<test>.delays.<random>``), so its
ladder's 32 levels, deliver exchange and undeliverable queue are its own and deleted
afterwards. Per-delay queues are named by their delay alone (``backoff--{N}ms``, on
every delay exchange), so the per-delay tests use odd delays no other test uses.

The plugin tests run on ``AIO_BACKOFF_PLUGIN_AMQP_URL`` (a broker with the
delayed-message-exchange plugin, ``scripts/pluginbroker.sh``) and are skipped without
it; the RabbitMQ 4.3 test runs on ``AIO_BACKOFF_RABBITMQ43_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5674/``) and is skipped when nothing answers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import pytest
import requests
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from aio_backoff import (
    RETRIES_HEADER,
    Backoff,
    CopyNotPlaced,
    DelayedPublisher,
    Ladder,
    Retrier,
    delay_queue_name,
    parking_queue_name,
)
from aio_backoff.core import LADDER_LEVELS, DelayedExchange
from aio_backoff.core._ladder import MAX_TARGET_BYTES
from aio_backoff.core._protocol import DEATH_HEADER_PREFIXES
from tests import brokers
from tests.aio.retrying import (
    FAST_FAILURES,
    Recorder,
    fast_backoff,
    get_one,
    handler_failing,
    publish,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]

CLOCK_TOLERANCE_MS = 5
"""A copy may seem to come back this much early: the broker's clock and ours."""
LATE_MS = 500
"""How late a copy may come back on a busy machine."""

PLUGIN = brokers.plugin()
RABBITMQ43_URL = os.environ.get(
    "AIO_BACKOFF_RABBITMQ43_AMQP_URL", "amqp://guest:guest@127.0.0.1:5674/"
)
needs_plugin = pytest.mark.skipif(PLUGIN is None, reason=brokers.PLUGIN_SKIP_REASON)


# -- a broker to work on, and what to delete afterwards ------------------------------


@dataclass
class Site:
    """One broker a test works on: a channel, the names it made (deleted by
    :meth:`clean`), its management API."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    api_url: str
    names: Callable[[str], str]
    queues: list[str] = field(default_factory=list)
    delay_queues: list[str] = field(default_factory=list)
    """Per-delay queues, deleted only when empty: named by their delay alone, they
    are shared with any other run on the broker (the Python 3.13 lane runs these
    tests on the same broker at the same time) whose copies may wait in them."""
    exchanges: list[str] = field(default_factory=list)
    ladders: list[Ladder] = field(default_factory=list)
    retriers: list[Retrier] = field(default_factory=list)
    publishers: list[DelayedPublisher] = field(default_factory=list)

    async def queue(self, label: str, **arguments: Any) -> AbstractQueue:
        """A fresh durable queue (its ``{queue}.parked`` deleted with it)."""
        name = self.names(label)
        return await self.declare(name, arguments=arguments or None)

    async def declare(self, name: str, **options: Any) -> AbstractQueue:
        self.queues.append(name)
        options.setdefault("durable", True)
        return await self.channel.declare_queue(name, **options)

    def delay_exchange(self) -> str:
        """A delay exchange of this test's own: its ladders are deleted afterwards."""
        name = self.names("delays")
        self.exchanges.append(name)  # per-delay's headers exchange
        self.exchanges.append(DelayedExchange(name).name)  # the plugin's
        for queue_type in ("classic", "quorum"):
            self.ladders.append(Ladder(name, queue_type))
        return name

    def retrier(self, **kwargs: Any) -> Retrier:
        kwargs.setdefault("backoff", fast_backoff())
        kwargs.setdefault("failure_policy", FAST_FAILURES)
        kwargs.setdefault("delay_exchange", self.delay_exchange())
        retrier = Retrier(self.channel, **kwargs)
        self.retriers.append(retrier)
        return retrier

    def publisher(self, **kwargs: Any) -> DelayedPublisher:
        kwargs.setdefault("failure_policy", FAST_FAILURES)
        kwargs.setdefault("delay_exchange", self.delay_exchange())
        publisher = DelayedPublisher(self.channel, **kwargs)
        self.publishers.append(publisher)
        return publisher

    async def api(self, path: str) -> Any:
        """GET the management API's ``/api/{path}``; None for a 404."""
        parts = urllib.parse.urlsplit(self.api_url)
        url = f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}"

        def get() -> Any:
            response = requests.get(
                url, auth=(parts.username or "", parts.password or ""), timeout=10
            )
            if response.status_code == 404:
                return None
            response.raise_for_status()
            return response.json()

        return await asyncio.to_thread(get)

    async def queues_named(self, pattern: str) -> set[str]:
        """Names of the queues of vhost ``/`` matching the regex ``pattern``."""
        query = urllib.parse.urlencode(
            {"name": pattern, "use_regex": "true", "page": 1, "page_size": 500}
        )
        page = await self.api(f"queues/%2F?{query}")
        assert page["filtered_count"] <= 500, "more queues than one page"
        return {queue["name"] for queue in page["items"]}

    async def exists(self, queue: str) -> bool:
        quoted = urllib.parse.quote(queue, safe="")
        return await self.api(f"queues/%2F/{quoted}") is not None

    async def message_count(self, queue: str) -> int:
        """How many messages wait in ``queue`` now (a passive declare, not the
        management API's lagging statistics)."""
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        assert count is not None
        return count

    async def clean(self) -> None:
        for closable in [*self.retriers, *self.publishers]:
            with contextlib.suppress(Exception):
                await closable.close()
        # closed before its queues are deleted: a robust channel whose consumer the
        # broker cancels (its queue deleted) declares the queue again to consume it
        with contextlib.suppress(Exception):
            await self.channel.close()
        cleanup = await self.connection.channel()
        # sent without waiting for each answer; the last delete waits for them all
        raw = await cleanup.get_underlay_channel()
        for queue in dict.fromkeys(self.queues):
            await raw.queue_delete(queue, nowait=True)
            await raw.queue_delete(parking_queue_name(queue), nowait=True)
        for ladder in self.ladders:
            for queue in ladder.queue_names:
                await raw.queue_delete(queue, nowait=True)
            for level in range(LADDER_LEVELS):
                await raw.exchange_delete(ladder.level(level), nowait=True)
            await raw.exchange_delete(ladder.deliver_exchange, nowait=True)
            await raw.exchange_delete(ladder.undeliverable, nowait=True)
        for exchange in self.exchanges:
            await raw.exchange_delete(exchange, nowait=True)
        await raw.exchange_delete(self.names("last"))
        await cleanup.close()
        for queue in dict.fromkeys(self.delay_queues):
            await self.delete_if_empty(queue)

    async def delete_if_empty(self, queue: str) -> None:
        """Delete ``queue`` unless it holds messages (the broker refuses, and closes
        the channel: one channel per queue)."""
        channel = await self.connection.channel()
        try:
            with contextlib.suppress(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.queue_delete(queue, if_empty=True)
        finally:
            if not channel.is_closed:
                await channel.close()


@contextlib.asynccontextmanager
async def site_on(
    amqp_url: str, api_url: str, names: Callable[[str], str]
) -> AsyncIterator[Site]:
    connection = await aio_pika.connect_robust(amqp_url, timeout=10)
    try:
        site = Site(connection, await connection.channel(), api_url, names)
        try:
            yield site
        finally:
            await site.clean()
    finally:
        await connection.close()


@pytest.fixture
async def site(unique_name: Callable[[str], str]) -> AsyncIterator[Site]:
    """The broker under test (``AIO_BACKOFF_BROKER``)."""
    broker = brokers.current()
    async with site_on(broker.amqp_url, broker.api_url, unique_name) as made:
        yield made


@pytest.fixture
async def plugin_site(unique_name: Callable[[str], str]) -> AsyncIterator[Site]:
    """The broker with the delayed-message-exchange plugin."""
    if PLUGIN is None:
        pytest.skip(brokers.PLUGIN_SKIP_REASON)
    async with site_on(PLUGIN.amqp_url, PLUGIN.api_url, unique_name) as made:
        yield made


# -- helpers -------------------------------------------------------------------------


async def holds(
    check: Callable[[], Awaitable[bool]], *, seconds: float, what: str
) -> None:
    """Poll the async ``check`` until it holds (``wait_until`` for broker calls)."""
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            msg = f"timed out after {seconds} s waiting for {what}"
            raise AssertionError(msg)
        await asyncio.sleep(0.05)


def gaps_ms(recorder: Recorder) -> list[float]:
    """Milliseconds between one handler call and the next."""
    return [(b.at - a.at) * 1000 for a, b in itertools.pairwise(recorder.calls)]


def assert_on_time(gaps: Iterable[float], delays: Iterable[int]) -> None:
    for gap, delay in zip(gaps, delays, strict=True):
        assert delay - CLOCK_TOLERANCE_MS <= gap <= delay + LATE_MS, (gap, delay)


def bits(delay_ms: int) -> list[int]:
    """The set bits of ``delay_ms``: the ladder levels a copy waits in."""
    return [level for level in range(LADDER_LEVELS) if delay_ms >> level & 1]


def death_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {
        key: value
        for key, value in (message.headers or {}).items()
        if key.startswith(DEATH_HEADER_PREFIXES)
    }


async def parked(
    site: Site, queue: str, seconds: float = 10
) -> AbstractIncomingMessage:
    """The next message in ``{queue}.parked`` (declared here, durable, as the
    publisher would)."""
    parking = await site.declare(parking_queue_name(queue))
    message = await get_one(parking, seconds=seconds)
    await message.ack()
    return message


# -- 1. the ladder delivers each copy after its delay --------------------------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_ladder_brings_each_copy_back_after_its_delay(
    site: Site, queue_type: str
) -> None:
    schedule = (0, 1, 5, 37, 130, 1000)
    target = await site.queue("target")
    retrier = site.retrier(
        backoff=fast_backoff(schedule=schedule, limit=len(schedule)),
        queue_type=queue_type,
    )
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=100))
    await publish(site.channel, target.name, message_id="ladder-1")

    parked_message = await parked(site, target.name, seconds=15)
    assert len(recorder.calls) == len(schedule) + 1

    assert [call.retries for call in recorder.calls] == [None, 1, 2, 3, 4, 5, 6]
    assert_on_time(gaps_ms(recorder), schedule)
    ladder = Ladder(retrier.publisher.delay_exchange, queue_type)  # type: ignore[arg-type]
    for call, delay in zip(recorder.calls[1:], schedule, strict=True):
        assert Ladder.parse_routing_key(call.message.routing_key or "") == (
            delay,
            target.name,
        )
        assert call.message.headers["backoff"] == delay
    # the last raise found the limit spent: parked, with the count it reached
    assert parked_message.message_id == "ladder-1"
    assert parked_message.headers[RETRIES_HEADER] == len(schedule)
    assert "Backoff aborted after '6' retries" in str(
        parked_message.headers["backoff-error"]
    )
    assert await site.message_count(target.name) == 0
    assert await site.message_count(ladder.undeliverable) == 0


# -- 2. the copies carry no death headers --------------------------------------------


async def test_ladder_copy_sheds_death_headers_and_they_do_not_grow(
    site: Site,
) -> None:
    # every delay's highest bit is bit 5: each copy enters the ladder at level 5
    schedule = (37, 45, 61, 33, 50)
    assert {delay.bit_length() - 1 for delay in schedule} == {5}
    target = await site.queue("target")
    # the first delivery was really dead-lettered: it carries the broker's headers
    detour = await site.queue(
        "detour",
        **{
            "x-message-ttl": 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target.name,
        },
    )
    retrier = site.retrier(backoff=fast_backoff(schedule=schedule, limit=10))
    ladder = Ladder(retrier.publisher.delay_exchange)
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=len(schedule)))
    # sees each copy as it was published (nothing else enters level 5)
    spy = await site.queue("spy")
    await spy.bind(ladder.level(5), "#")
    await publish(site.channel, detour.name, message_id="deaths")

    await recorder.wait(len(schedule) + 1)
    first = recorder.calls[0].message
    assert first.headers["x-death"][0]["queue"] == detour.name
    assert first.headers["x-first-death-queue"] == detour.name

    published = [await get_one(spy) for _ in schedule]
    assert [copy.headers[RETRIES_HEADER] for copy in published] == [1, 2, 3, 4, 5]
    for copy in published:
        assert death_headers(copy) == {}, copy.headers

    for call, delay in zip(recorder.calls[1:], schedule, strict=True):
        deaths = call.message.headers["x-death"]
        levels = [ladder.level(level) for level in bits(delay)]
        # only this copy's own hops, each once: nothing from the detour or from
        # earlier copies
        assert sorted(death["queue"] for death in deaths) == sorted(levels)
        assert all(death["count"] == 1 for death in deaths), deaths
        assert len(deaths) <= bin(delay).count("1")
        assert call.message.headers["x-first-death-queue"] == ladder.level(5)
        if "x-last-death-queue" in call.message.headers:  # RabbitMQ 3.13 and later
            assert call.message.headers["x-last-death-queue"] == ladder.level(
                bits(delay)[0]
            )


async def test_publish_copy_drops_death_headers_of_the_original(
    site: Site,
) -> None:
    """DelayedPublisher.publish_copy with a plan for the ladder, seen at the entry."""
    target = await site.queue("target")
    publisher = site.publisher()
    await publisher.declare()
    ladder = Ladder(publisher.delay_exchange)
    spy = await site.queue("spy")
    await spy.bind(ladder.entry(20), "#")
    headers = {
        "x-death": [
            {"count": 3, "queue": "elsewhere", "reason": "expired", "exchange": ""}
        ],
        "x-first-death-queue": "elsewhere",
        "x-first-death-reason": "expired",
        "x-first-death-exchange": "",
        "x-last-death-queue": "elsewhere",
        "x-last-death-reason": "expired",
        "x-last-death-exchange": "",
        "kept": "yes",
    }
    await publish(site.channel, target.name, headers=headers)
    original = await get_one(target)
    plan = publisher.plan(
        original, fast_backoff(schedule=(20,))(), target_queue=target.name
    )
    await publisher.publish_copy(original, plan)
    await original.ack()

    seen = await get_one(spy)
    assert death_headers(seen) == {}
    assert seen.headers["kept"] == "yes"
    back = await get_one(target)
    assert back.headers["kept"] == "yes"
    assert sorted(death["queue"] for death in back.headers["x-death"]) == [
        ladder.level(2),  # 20 ms: 16 + 4
        ladder.level(4),
    ]


# -- 2b. a burst of copies waits for no declare ---------------------------------------


@pytest.mark.parametrize("topology", ["ladder", "per-delay"])
async def test_consume_binds_the_queue_before_any_retry(
    site: Site, topology: str
) -> None:
    """The first copies of a burst find their target bound already (ladder); the
    per-delay topology routes by name and binds nothing."""
    target = await site.queue("target")
    retrier = site.retrier(topology=topology)
    ladder = Ladder(retrier.publisher.delay_exchange)
    await retrier.consume(target, handler_failing(Recorder(), times=1))
    quoted = urllib.parse.quote(ladder.deliver_exchange, safe="")
    if topology == "per-delay":
        assert await site.api(f"exchanges/%2F/{quoted}") is None  # no ladder at all
        return
    bindings = await site.api(f"exchanges/%2F/{quoted}/bindings/source")
    assert [(b["destination"], b["routing_key"]) for b in bindings] == [
        (target.name, ladder.target_binding(target.name).routing_key)
    ]


async def test_a_burst_of_copies_shares_one_declare_and_one_bind(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 copies for a target nobody bound yet, published at once: one ladder
    declare and one bind between them, not one each, and every copy comes back."""
    target = await site.queue("target")
    publisher = site.publisher()
    ladder = Ladder(publisher.delay_exchange)
    binds: list[str] = []
    declares: list[str] = []
    queue_bind = aiormq.Channel.queue_bind
    exchange_declare = aiormq.Channel.exchange_declare

    async def counted_bind(self: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue == target.name:  # not the ladder's own (declared with it)
            binds.append(queue)
        return await queue_bind(self, queue, *args, **kwargs)

    async def counted_declare(self: Any, exchange: str = "", **kwargs: Any) -> Any:
        if kwargs.get("passive") and exchange == ladder.deliver_exchange:
            declares.append("ladder")  # declare_ladder's closing round trip
        return await exchange_declare(self, exchange, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "queue_bind", counted_bind)
    monkeypatch.setattr(aiormq.Channel, "exchange_declare", counted_declare)
    count = 30
    for number in range(count):
        await publish(site.channel, target.name, message_id=f"burst-{number}")
    originals = [await get_one(target) for _ in range(count)]
    backoff = fast_backoff(schedule=(50,))()
    await asyncio.gather(
        *(
            publisher.publish_copy(
                message, publisher.plan(message, backoff, target_queue=target.name)
            )
            for message in originals
        )
    )
    for message in originals:
        await message.ack()
    assert declares == ["ladder"]
    assert binds == [target.name]
    back = {(await get_one(target)).message_id for _ in range(count)}
    assert back == {f"burst-{number}" for number in range(count)}


async def test_a_ladder_declared_with_other_arguments_says_what_to_do(
    site: Site,
) -> None:
    """A level queue left by an earlier version (classic, not lazy): the declare
    fails once, permanently, with the broker's reason and the way out."""
    publisher = site.publisher()
    ladder = Ladder(publisher.delay_exchange)
    earlier = ladder.level_arguments(5)
    del earlier["x-queue-mode"]
    await site.channel.declare_queue(ladder.level(5), durable=True, arguments=earlier)
    with pytest.raises(CopyNotPlaced) as caught:
        await publisher.declare()
    assert caught.value.permanent
    text = str(caught.value)
    assert "PRECONDITION_FAILED" in text
    assert "x-queue-mode" in text
    assert f"delete the queues and exchanges named {ladder.prefix!r}.*" in text


# -- 3. the ladder's queues are fixed; per-delay makes one per delay -----------------


@pytest.mark.timeout(90)  # 200 copies each way; a loaded CI machine is slow
async def test_ladder_keeps_33_queues_where_per_delay_makes_one_per_delay(
    site: Site,
) -> None:
    # 200 distinct odd delays, from 0.7 to 1.5 s: spread over levels 9 and 10, every
    # bit below in use. Odd and above 700: no other test makes these delay queues.
    delays = random.Random(7).sample(range(701, 1500, 2), 200)

    async def run(topology: str) -> tuple[Retrier, list[int]]:
        target = await site.queue(f"target-{topology}")
        # per-delay queues outlive the test (deleted afterwards): all can be counted
        retrier = site.retrier(topology=topology, grace_ms=60_000)
        came_back: list[int] = []

        async def handle(message: AbstractIncomingMessage) -> None:
            if message.headers.get(RETRIES_HEADER) is None:
                raise Backoff(delay_ms=int(message.body))
            came_back.append(int(message.body))

        await retrier.consume(target, handle)
        for delay in delays:
            await publish(site.channel, target.name, str(delay).encode())
        await wait_until(
            lambda: len(came_back) == len(delays), seconds=60, what="every copy"
        )
        assert sorted(came_back) == sorted(delays)
        return retrier, came_back

    (ladder_retrier, _), _ = await asyncio.gather(run("ladder"), run("per-delay"))
    prefix = Ladder(ladder_retrier.publisher.delay_exchange).prefix
    assert await site.queues_named("^" + re.escape(prefix)) == set(
        Ladder(ladder_retrier.publisher.delay_exchange).queue_names
    )
    assert len(Ladder().queue_names) == 33

    per_delay = {delay_queue_name(delay) for delay in delays}
    site.delay_queues.extend(sorted(per_delay))  # deleted afterwards, if empty
    made = await site.queues_named(r"^backoff--\d+ms$")
    assert per_delay <= made
    assert len(per_delay) == 200


# -- 4. a deleted target: undeliverable, and nothing stalls behind it ----------------


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_copies_for_a_deleted_queue_go_to_undeliverable_without_a_stall(
    site: Site, queue_type: str
) -> None:
    delay = 700  # levels 9, 7, 5, 4, 3, 2
    backoff = fast_backoff(schedule=(delay,), limit=1)
    publisher = site.publisher(queue_type=queue_type)
    await publisher.declare()
    ladder = Ladder(publisher.delay_exchange, queue_type)  # type: ignore[arg-type]
    gone = await site.queue("gone")
    alive = await site.queue("alive")

    async def delay_one(queue: AbstractQueue, body: bytes) -> None:
        await publish(site.channel, queue.name, body)
        original = await get_one(queue)
        await publisher.retry(original, backoff(), target_queue=queue.name)
        await original.ack()

    for number in range(5):
        await delay_one(gone, b"gone %d" % number)
    await gone.delete(if_unused=False, if_empty=False)
    # behind the five in every level it waits in
    started = time.monotonic()
    await delay_one(alive, b"alive")

    back = await get_one(alive, seconds=5)
    took = (time.monotonic() - started) * 1000
    assert back.body == b"alive"
    assert delay - CLOCK_TOLERANCE_MS <= took <= delay + LATE_MS, took

    async def undeliverable_count(expected: int) -> bool:
        return await site.message_count(ladder.undeliverable) == expected

    await holds(
        lambda: undeliverable_count(5), seconds=5, what="5 undeliverable copies"
    )
    waiting = await site.channel.declare_queue(ladder.undeliverable, passive=True)
    kept = [await get_one(waiting) for _ in range(5)]
    assert sorted(message.body for message in kept) == [
        b"gone %d" % number for number in range(5)
    ]
    for message in kept:  # the key still says where it was going, for a replay
        assert Ladder.parse_routing_key(message.routing_key or "") == (
            delay,
            gone.name,
        )
        await message.ack()


# -- 5. topologies mixed on one queue (a migration) ----------------------------------


@dataclass
class Hop:
    topology: str
    retries: int | None


async def mix_topologies(site: Site, topologies: list[str]) -> None:
    """Consumers of every topology on one queue, switched while copies wait.

    Phase ``i`` consumes with ``topologies[i]`` alone (so each message's hop ``i``
    is known), then all of them at once until every message succeeds.
    """
    # odd delays no other test uses; each long enough to switch consumers
    schedule = (241, 251, 263, 257, 43)
    grace_ms = 1000
    count = 5
    succeed_at = len(topologies) + 1  # alone phases, then one mixed hop
    target = await site.queue("shared")
    delay_exchange = site.delay_exchange()
    hops: dict[str, list[Hop]] = {}
    done = asyncio.Event()

    def handler(topology: str) -> Callable[[AbstractIncomingMessage], Any]:
        async def handle(message: AbstractIncomingMessage) -> None:
            retries = message.headers.get(RETRIES_HEADER)
            hops.setdefault(str(message.message_id), []).append(
                Hop(topology, retries)  # type: ignore[arg-type]
            )
            if (retries or 0) < succeed_at:
                raise Backoff
            if sum(len(h) for h in hops.values()) == count * (succeed_at + 1):
                done.set()

        return handle

    retriers = {
        topology: site.retrier(
            topology=topology,
            delay_exchange=delay_exchange,
            grace_ms=grace_ms,
            backoff=fast_backoff(schedule=schedule, limit=10),
        )
        for topology in topologies
    }
    tags: dict[str, ConsumerTag] = {}

    async def consume(topology: str) -> None:
        tags[topology] = await retriers[topology].consume(target, handler(topology))

    async def cancel(topology: str) -> None:
        await target.cancel(tags.pop(topology))

    def every_message_had(calls: int) -> Callable[[], bool]:
        return lambda: (
            len(hops) == count and all(len(h) >= calls for h in hops.values())
        )

    for number in range(count):  # waiting together for the first consumer
        await publish(site.channel, target.name, message_id=f"m{number}")
    for phase, topology in enumerate(topologies):
        await consume(topology)
        # a few hundred ms each; a machine loaded by other suites takes longer
        await wait_until(
            every_message_had(phase + 1), seconds=30, what=f"phase {phase}"
        )
        await cancel(topology)
    for topology in topologies:
        await consume(topology)
    async with asyncio.timeout(30):
        await done.wait()

    assert sorted(hops) == [f"m{number}" for number in range(count)]
    for message_id, seen in hops.items():
        # counted on, hop after hop, whatever topology carried the copy before. A
        # per-delay copy confirmed later than its 1 s grace is placed once more
        # (a duplicate, never a loss), which a loaded machine can cause
        counts = [hop.retries for hop in seen]
        assert list(dict.fromkeys(counts)) == [None, *range(1, succeed_at + 1)], (
            message_id,
            seen,
        )
        firsts = [next(hop for hop in seen if hop.retries == n) for n in set(counts)]
        firsts.sort(key=lambda hop: -1 if hop.retries is None else hop.retries)
        assert [hop.topology for hop in firsts[: len(topologies)]] == topologies
    # the per-delay queues drain, then expire grace_ms after their last copy
    used = {delay_queue_name(schedule[i]) for i in range(len(schedule))}
    site.delay_queues.extend(sorted(used))

    async def all_gone() -> bool:
        return not any([await site.exists(queue) for queue in used])

    await holds(all_gone, seconds=15, what="the per-delay queues to expire")


@pytest.mark.timeout(120)
async def test_per_delay_and_ladder_consumers_share_a_queue(site: Site) -> None:
    await mix_topologies(site, ["per-delay", "ladder", "per-delay"])


@needs_plugin
@pytest.mark.timeout(120)
async def test_all_three_topologies_share_a_queue(plugin_site: Site) -> None:
    await mix_topologies(plugin_site, ["per-delay", "ladder", "plugin", "per-delay"])


# -- 6. bad input --------------------------------------------------------------------


@pytest.mark.parametrize("make", [Retrier, DelayedPublisher])
def test_unknown_topology_or_queue_type_is_refused(
    site: Site, make: Callable[..., Any]
) -> None:
    with pytest.raises(ValueError, match="'ladder', 'per-delay' or 'plugin'"):
        make(site.channel, topology="bogus")
    # a bad queue type is refused whatever the topology: it waits for no switch
    for topology in ("ladder", "per-delay", "plugin"):
        with pytest.raises(ValueError, match="'classic' or 'quorum', got 'bogus'"):
            make(site.channel, topology=topology, queue_type="bogus")


@pytest.mark.parametrize("shape", ["wildcard", "long"])
async def test_the_ladder_refuses_a_queue_it_cannot_name(
    site: Site, shape: str
) -> None:
    """Refused when consuming starts; a message retried through ``process()`` on
    such a queue anyway is parked at once with the reason."""
    if shape == "wildcard":
        name = site.names("target") + ".#.x"
        expected = "'*' or '#' word"
    else:  # one byte too long (aio-pika takes ASCII queue names only)
        name = site.names("t") + "."
        name += "x" * (MAX_TARGET_BYTES + 1 - len(name))
        assert len(name.encode()) == MAX_TARGET_BYTES + 1
        expected = f"leaves {MAX_TARGET_BYTES} bytes"
    target = await site.declare(name)
    retrier = site.retrier()
    recorder = Recorder()
    with pytest.raises(ValueError, match=re.escape(expected)) as refused:
        await retrier.consume(target, handler_failing(recorder, times=100))
    assert "topology='per-delay'" in str(refused.value)

    await publish(site.channel, name, message_id="unnameable")
    message = await get_one(target)
    with pytest.raises(CopyNotPlaced):
        async with retrier.process(message, queue=target):
            raise retrier.policy.backoff()

    kept = await parked(site, name)
    assert kept.message_id == "unnameable"
    reason = str(kept.headers["backoff-error"])
    assert expected in reason
    assert "topology='per-delay'" in reason
    assert "cannot be encoded" not in reason
    assert await site.message_count(name) == 0


# -- 7. an exclusive target queue ----------------------------------------------------


async def test_ladder_refuses_an_exclusive_queue_and_parks_its_messages(
    site: Site,
) -> None:
    """The publisher binds the target from its own connection: 405 RESOURCE_LOCKED.
    ``consume`` says so up front; a message retried anyway (``wrap``) is parked."""
    target = await site.declare(site.names("exclusive"), exclusive=True, durable=False)
    retrier = site.retrier()
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"is exclusive .*topology='per-delay'"):
        await retrier.consume(target, handler_failing(recorder, times=100))
    await target.consume(
        retrier.wrap(handler_failing(recorder, times=100), queue=target)
    )
    await publish(site.channel, target.name, message_id="exclusive")

    message = await parked(site, target.name)
    reason = str(message.headers["backoff-error"])
    assert "RESOURCE_LOCKED" in reason
    assert "refused by the broker" in reason
    assert len(recorder.calls) == 1


# -- 8. the plugin topology where there is no plugin ---------------------------------


async def server_version(channel: AbstractChannel) -> str:
    underlay = await channel.get_underlay_channel()
    version = underlay.connection.server_properties["version"]
    return version.decode() if isinstance(version, bytes) else str(version)


async def test_plugin_topology_without_the_plugin_fails_at_consume(
    site: Site,
) -> None:
    version = await server_version(site.channel)
    target = await site.queue("target")
    retrier = site.retrier(topology="plugin")

    with pytest.raises(CopyNotPlaced) as caught:
        await retrier.consume(target, handler_failing(Recorder(), times=1))

    assert caught.value.permanent
    text = str(caught.value)
    assert "rabbitmq_delayed_message_exchange" in text
    assert "topology='ladder'" in text
    if tuple(int(part) for part in version.split(".")[:2]) >= (4, 3):
        assert "4.3 or later" in text
    else:
        assert "exchange type" in text
    # the publisher's connection took the refusal; the consumer's is untouched
    assert not site.connection.is_closed
    assert not site.channel.is_closed
    await site.channel.declare_queue(target.name, passive=True)


async def test_plugin_topology_is_refused_on_rabbitmq_43(
    unique_name: Callable[[str], str],
) -> None:
    try:
        connection = await aio_pika.connect(RABBITMQ43_URL, timeout=3)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
        pytest.skip(f"no RabbitMQ 4.3 at {RABBITMQ43_URL}: {error!r}")
    try:
        channel = await connection.channel()
        version = await server_version(channel)
        if not version.startswith("4.3"):
            pytest.skip(f"{RABBITMQ43_URL} is RabbitMQ {version}")
        publisher = DelayedPublisher(
            channel, topology="plugin", delay_exchange=unique_name("delays")
        )
        try:
            with pytest.raises(CopyNotPlaced) as caught:
                await publisher.declare()
        finally:
            await publisher.close()
        assert caught.value.permanent
        assert "4.3 or later" in str(caught.value)
        assert f"this broker is {version}" in str(caught.value)
        assert "topology='ladder'" in str(caught.value)
    finally:
        await connection.close()


# -- 9. the plugin delivers after the delay ------------------------------------------


@needs_plugin
async def test_plugin_brings_each_copy_back_after_its_delay(
    plugin_site: Site,
) -> None:
    schedule = (5, 100, 200, 500)
    site = plugin_site
    target = await site.queue("target")
    retrier = site.retrier(
        topology="plugin",
        backoff=fast_backoff(schedule=schedule, limit=len(schedule)),
    )
    recorder = Recorder()
    await retrier.consume(target, handler_failing(recorder, times=100))
    await publish(site.channel, target.name, message_id="plugin-1")

    parked_message = await parked(site, target.name, seconds=10)
    assert len(recorder.calls) == len(schedule) + 1
    assert [call.retries for call in recorder.calls] == [None, 1, 2, 3, 4]
    for gap, delay in zip(gaps_ms(recorder), schedule, strict=True):
        assert delay <= gap <= delay + LATE_MS, (gap, delay)
    for call in recorder.calls[1:]:
        assert (
            call.message.exchange
            == DelayedExchange(retrier.publisher.delay_exchange).name
        )
    assert parked_message.headers[RETRIES_HEADER] == len(schedule)


# -- 10. declare() when the publisher cannot connect yet -----------------------------


class LateProxy:
    """A TCP port that refuses connections until :meth:`start`, then forwards them
    to the broker."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = parts._replace(
            netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"
        ).geturl()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_declare_that_cannot_connect_is_logged_and_the_first_copy_declares(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = LateProxy(brokers.current().amqp_url)
    try:
        publisher = site.publisher()
        publisher.connection.url = proxy.url
        ladder = Ladder(publisher.delay_exchange)
        retrier = site.retrier(publisher=publisher)
        target = await site.queue("target")
        recorder = Recorder()
        with caplog.at_level(logging.WARNING, logger="aio_backoff"):
            await retrier.consume(target, handler_failing(recorder, times=1))
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("aio_")]
        assert any("the first copy declares it instead" in line for line in lines)
        assert any(repr(publisher.delay_exchange) in line for line in lines)
        assert not await site.exists(ladder.level(0))

        await proxy.start()
        await publish(site.channel, target.name)
        await recorder.wait(2, seconds=10)
        assert recorder.calls[1].retries == 1
        assert await site.queues_named("^" + re.escape(ladder.prefix)) == set(
            ladder.queue_names
        )
    finally:
        await site.clean()  # the publisher's connection goes through the proxy
        site.retriers.clear()
        site.publishers.clear()
        await proxy.close()
