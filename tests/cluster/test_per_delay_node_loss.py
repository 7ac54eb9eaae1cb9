"""Baseline: today's per-delay topology when the node holding a delay queue dies.

The library as it is (a ``Retrier`` with ``topology="per-delay"``: one classic
``backoff--{N}ms`` queue per delay) consumes a QUORUM target queue, so the target
itself survives the loss of a node. Up to ``COPIES`` messages are put into backoff
in one delay queue, which lives on node 3 (declared there first, as by another service);
the Retrier and the target's leader are on node 1. Then node 3 is killed (-9):

- while it is down, no copy comes back, not even when they are all due;
- (a) started again once all are due, it gives every copy back, each late by
  about the outage past its due time;
- (b) new retries cannot be placed while it is down. A copy comes back
  unroutable (312 NO_ROUTE: the binding leads to a queue with no live process)
  and the declare that follows is refused with 404 "home node ... is down or
  inaccessible", which also closes the publisher's channel. The library takes
  that refusal for permanent and parks the message at once; the publishes in
  flight on the same channel see it closed, take it for transient (the gate
  closes, the message goes back after a pause of 1, 2, 4, 8 s, no hot loop) and
  park it at the fifth try; a parked copy whose publish was cut off can be
  parked twice. Once the cluster forgets the node, every copy in its delay queue
  is lost; a new retry then declares the delay queue afresh on a live node.

These are the facts the ladder topology is to change; the figures go to
``build/cluster-per-delay.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from aio_backoff import (
    Backoff,
    Retrier,
    delay_queue,
    parking_queue_name,
)
from tests.cluster.figures import Figures
from tests.cluster.nodes import Cluster, amqp_url, node_name
from tests.cluster.running import (
    GATE_CLOSED,
    GAVE_UP,
    PERMANENT,
    REQUEUED,
    Outcomes,
    sleep_until,
    wait_for,
)
from tests.faults.ledger import HOT_LOOP_RUNS_PER_SECOND, max_in_window

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(150)]

COPIES = 5000
"""At most this many copies in backoff when the node dies. The Retrier places
100-300 copies a second on the shared 2-core box (each confirmed, each original
acked on a quorum queue; the low end under coverage and a busy box): 5,000 took
longer than the delay, so the fill stops after ``FILL_BUDGET_S`` with what it
placed by then."""
FILL_BUDGET_S = 7.0
"""Half the delay: the node dies before the first copy is due back."""
FILL_BATCH = 250
MIN_COPIES = 250
"""Fewer placed within the budget: the box is too busy for the figures."""
DELAY_MS = 15_000
NEW = 100
"""Fresh messages that ask for a retry while the node is down."""
HOME = 1
"""The Retrier's node, and the leader of the target queue."""
VICTIM = 3
"""The node that holds the delay queue, and dies."""
MARGIN_S = 2.0
"""How long past the last copy's due time the node stays down (and, after a
forget, how long we wait for copies that cannot come)."""


class InBackoff(Backoff):
    schedule = (DELAY_MS,)
    limit = 5
    random_sigma = 0


def came_through_delay(message: AbstractIncomingMessage) -> bool:
    """Whether a delay queue dead-lettered this message (its x-death names one)."""
    deaths = (message.headers or {}).get("x-death")
    return isinstance(deaths, list) and any(
        isinstance(death, dict) and str(death.get("queue", "")).startswith("backoff--")
        for death in deaths
    )


@dataclass
class Book:
    """When each message id ran before its delay, and when its copy came back."""

    runs: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    back: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    parked: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """When each id arrived in the parking queue (read and acked by the test)."""

    def returned(self, ids: Iterable[str]) -> int:
        return sum(1 for key in ids if key in self.back)

    def due(self, key: str) -> float:
        """When its copy was due back: its first run plus the delay (the copy is
        confirmed a few ms later, so lateness reads a few ms high)."""
        return self.runs[key][0] + DELAY_MS / 1000


@dataclass
class Scenario:
    """A Retrier on node ``HOME`` consuming a quorum queue, whose delay queue for
    ``DELAY_MS`` lives on node ``VICTIM``."""

    cluster: Cluster
    connection: AbstractRobustConnection
    target: str
    book: Book
    figures: Figures
    retrier: Retrier | None = None
    copies: list[str] = field(default_factory=list)
    outcomes: Outcomes = field(default_factory=Outcomes)

    @property
    def delay_queue(self) -> str:
        return delay_queue(DELAY_MS).name

    @property
    def parking(self) -> str:
        return parking_queue_name(self.target)

    async def count(self, queue: str) -> int | None:
        """Ready messages in ``queue`` (a passive declare), None if it is missing."""
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return None
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(declared.declaration_result.message_count or 0)

    async def publish(self, ids: Iterable[str]) -> None:
        """One persistent message per id to the target, confirmed."""
        async with self.connection.channel() as channel:
            pending = []
            for key in ids:
                message = aio_pika.Message(
                    key.encode(),
                    message_id=key,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                )
                pending.append(
                    channel.default_exchange.publish(message, routing_key=self.target)
                )
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)

    async def fill(self) -> None:
        """Put up to ``COPIES`` messages into backoff, as many as the Retrier places
        within ``FILL_BUDGET_S``: each runs once, asks for a retry and its copy
        waits in the delay queue on node ``VICTIM``."""
        started = time.monotonic()
        while len(self.copies) < COPIES and time.monotonic() - started < FILL_BUDGET_S:
            batch = [f"copy.{len(self.copies) + n}" for n in range(FILL_BATCH)]
            self.copies.extend(batch)
            await self.publish(batch)
            # the next batch goes once this one is being handled: never idle
            await wait_for(
                lambda: len(self.book.runs) >= len(self.copies) - FILL_BATCH,
                60,
                f"{len(self.copies) - FILL_BATCH} first runs",
                poll=0.05,
            )
        placed = len(self.copies)
        await wait_for(
            lambda: len(self.book.runs) >= placed, 60, f"{placed} first runs"
        )

        async def all_waiting() -> bool:
            return await self.count(self.delay_queue) == placed

        try:
            await wait_for(all_waiting, 15, f"{placed} copies in {self.delay_queue}")
        except AssertionError as error:
            msg = (
                f"{error} ({await self.count(self.delay_queue)} there, "
                f"{await self.count(self.target)} on the target, "
                f"{len(self.book.runs)} ran, {len(self.book.back)} back)"
            )
            raise AssertionError(msg) from None
        self.figures.copies = placed
        self.figures.delay_ms = DELAY_MS
        self.figures.fill_s = time.monotonic() - started
        assert placed >= MIN_COPIES, (
            f"only {placed} copies placed in {FILL_BUDGET_S} s; the box is too busy "
            "for a meaningful figure"
        )
        assert time.monotonic() < self.first_due(), (
            f"placing {placed} copies took {self.figures.fill_s:.1f} s, and the "
            f"first is due back already ({DELAY_MS} ms delay)"
        )

    def first_due(self) -> float:
        return min(self.book.due(key) for key in self.copies)

    def last_due(self) -> float:
        return max(self.book.due(key) for key in self.copies)

    async def new_retries_while_down(self) -> None:
        """``NEW`` fresh messages ask for a retry while the delay queue's node is
        down, watched until every copy in it is due (and ``MARGIN_S`` more): none
        is placed, and the library's log lines say what it did instead."""
        fresh = [f"new.{n}" for n in range(NEW)]
        started = time.monotonic()
        await self.publish(fresh)
        parked = self.book.parked
        window = max(self.last_due() + MARGIN_S - time.monotonic(), 10.0)
        with contextlib.suppress(AssertionError):  # still going round: counted
            await wait_for(lambda: all(key in parked for key in fresh), window, "")
        figures = self.figures
        figures.new_sent = NEW
        figures.new_watched_s = time.monotonic() - started
        figures.new_parked = sum(1 for key in fresh if key in parked)
        figures.new_parked_twice = sum(
            len(parked[key]) - 1 for key in fresh if key in parked
        )
        runs = [len(self.book.runs[key]) for key in fresh]
        figures.new_runs = sum(runs)
        figures.new_most_runs = max(runs)
        counts = self.outcomes.counts
        figures.new_permanent = counts[PERMANENT]
        figures.new_requeued = counts[REQUEUED]
        figures.new_gave_up = counts[GAVE_UP]
        figures.gate_closed = counts[GATE_CLOSED]
        back = self.book.returned(fresh)
        assert back == 0, f"{back} fresh copies came back: they were placed"
        assert not any(key in parked for key in self.copies)
        assert figures.new_permanent > 0, (
            "the refused declare (404, home node down) counts as a permanent refusal"
        )
        loops = {
            key: most
            for key in fresh
            if (most := max_in_window(self.book.runs[key], 1.0))
            > HOT_LOOP_RUNS_PER_SECOND
        }
        assert not loops, f"hot loop: runs of one message within one second: {loops}"

    async def none_back_while_down(self, *, forgotten: bool = False) -> None:
        """The node stays down until every copy is due and ``MARGIN_S`` more: none
        comes back. The delay queue is listed as down (gone once ``forgotten``)."""
        await sleep_until(self.last_due() + MARGIN_S)
        back = self.book.returned(self.copies)
        self.figures.back_while_down = back
        assert back == 0, f"{back} copies came back while their queue's node was down"
        queue = await self.cluster.queue(self.delay_queue)
        if forgotten:
            assert queue is None, (
                "forget_cluster_node deletes the classic queues of the forgotten node"
            )
        else:
            assert queue is not None, f"{self.delay_queue} vanished with its node"
            assert queue.get("state") == "down", queue

    def lateness(self) -> None:
        late = sorted(
            self.book.back[key][0] - self.book.due(key)
            for key in self.copies
            if key in self.book.back
        )
        if late:
            self.figures.late_min_s = late[0]
            self.figures.late_median_s = statistics.median(late)
            self.figures.late_max_s = late[-1]

    def tally(self) -> None:
        self.figures.returned = self.book.returned(self.copies)
        self.figures.lost = len(self.copies) - self.figures.returned
        self.figures.duplicates = sum(
            len(self.book.back[key]) - 1 for key in self.copies if key in self.book.back
        )


@pytest.fixture
async def scenario(
    whole_cluster: Cluster, figures: Figures, request: pytest.FixtureRequest
) -> AsyncIterator[Scenario]:
    cluster = whole_cluster
    library = logging.getLogger("aio_backoff")
    test = request.node.name.removeprefix("test_")[:30]
    target = f"cluster.{test}.{uuid.uuid4().hex[:6]}"
    book = Book()
    topology = delay_queue(DELAY_MS)

    # the delay queue lives on node VICTIM: declared there first (fresh)
    await cluster.delete_queue(topology.name)
    victim = await aio_pika.connect(amqp_url(VICTIM), timeout=10)
    async with victim:
        channel = await victim.channel()
        exchange = await channel.declare_exchange(
            topology.delay_exchange, aio_pika.ExchangeType.HEADERS, durable=True
        )
        queue = await channel.declare_queue(
            topology.name, durable=True, arguments=topology.arguments
        )
        await queue.bind(exchange, arguments=topology.binding_arguments)
    assert await cluster.queue_node(topology.name) == node_name(VICTIM)

    connection = await aio_pika.connect_robust(
        f"{amqp_url(HOME)}?reconnect_interval=0.5", timeout=10
    )
    run = Scenario(cluster, connection, target, book, figures)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        declared = await channel.declare_queue(
            target, durable=True, arguments={"x-queue-type": "quorum"}
        )
        assert await cluster.queue_node(target) == node_name(HOME)
        # the library parks in an existing parking queue as it is; the test
        # takes what arrives there
        parking = await channel.declare_queue(run.parking, durable=True)

        async def take_parked(message: AbstractIncomingMessage) -> None:
            book.parked[message.message_id or "?"].append(time.monotonic())
            await message.ack()

        await parking.consume(take_parked)

        async def handle(message: AbstractIncomingMessage) -> None:
            key = message.message_id or "?"
            if came_through_delay(message):
                book.back[key].append(time.monotonic())
                return
            book.runs[key].append(time.monotonic())
            raise InBackoff

        run.retrier = Retrier(channel, backoff=InBackoff, topology="per-delay")
        await run.retrier.consume(declared, handle)
        # the library's lines are counted, not kept: one per message and failure,
        # many with a traceback
        library.addHandler(run.outcomes)
        library.propagate = False
        library.setLevel(logging.INFO)
        yield run
    finally:
        library.removeHandler(run.outcomes)
        library.propagate = True
        library.setLevel(logging.NOTSET)
        if run.retrier is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await run.retrier.stop(timeout=2)
        await connection.close()
        await cluster.heal()  # the queues can be deleted once their nodes run
        for name in (target, run.parking, topology.name):
            await cluster.delete_queue(name)


async def test_node_restarted_copies_come_back_late(
    scenario: Scenario, whole_cluster: Cluster
) -> None:
    """Killed, then started again once every copy is due: none comes back while
    it is down, then every one does, late by the outage."""
    scenario.figures.scenario = "node killed, then restarted"
    await scenario.fill()
    killed = time.monotonic()
    await whole_cluster.kill(VICTIM)
    await scenario.none_back_while_down()

    await whole_cluster.restart(VICTIM)
    scenario.figures.down_s = time.monotonic() - killed
    await wait_for(
        lambda: scenario.book.returned(scenario.copies) >= len(scenario.copies),
        60,
        f"all {len(scenario.copies)} copies back after node {VICTIM} restarted",
    )
    scenario.tally()
    scenario.lateness()
    figures = scenario.figures
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert figures.late_min_s is not None
    # even the last copy due came back only once the node was up again
    assert figures.late_min_s >= MARGIN_S, figures


async def test_node_forgotten_copies_are_lost(
    scenario: Scenario, whole_cluster: Cluster
) -> None:
    """Killed: new retries are not placed while it is down (the library parks
    them); then forgotten by the cluster: every copy in its delay queue is lost,
    and a new retry declares the delay queue afresh on a live node."""
    scenario.figures.scenario = "node killed, then forgotten"
    await scenario.fill()
    await whole_cluster.kill(VICTIM)
    await scenario.new_retries_while_down()
    await whole_cluster.forget(VICTIM)
    await scenario.none_back_while_down(forgotten=True)
    scenario.tally()
    assert scenario.figures.returned == 0
    assert scenario.figures.lost == len(scenario.copies)

    # a new retry now declares the delay queue again, on a live node (fresh
    # messages still going round are placed there too, at their next try)
    after = [f"after.{n}" for n in range(20)]
    await scenario.publish(after)

    async def placed() -> bool:
        return (await scenario.count(scenario.delay_queue) or 0) >= len(after)

    await wait_for(placed, 20, f"{len(after)} new retries placed after the forget")
    home = await whole_cluster.queue_node(scenario.delay_queue)
    assert home in {node_name(n) for n in (1, 2, 3) if n != VICTIM}, home
    scenario.figures.after_forget = f"placed: delay queue declared again on {home}"
