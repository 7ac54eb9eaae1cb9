"""Acceptance: a quorum ladder keeps its copies when the node leading its levels dies.

A quorum ladder (``topology="ladder", queue_type="quorum"``, a delay exchange of
this test's own) is declared through a connection to node ``VICTIM``, so that the
leaders of its 33 queues are there (quorum leaders go to the declaring node);
each queue has a member on every node. The target is a quorum queue led by node
``HOME``; two Retriers, on nodes ``HOME`` and ``OTHER`` and on the same ladder,
consume it; every publisher of the test is on those two nodes too.

``COPIES`` delayed copies (delays ``MIN_DELAY_MS`` to ``MAX_DELAY_MS``, longest
first, so that nearly all are still waiting when the fill ends) are sent straight
into the ladder by a pipelined confirming publisher, with the address and
headers a Retrier's ``plan_retry`` gives them. Then node ``VICTIM`` is killed
(-9) and, right after, ``NEW`` fresh messages ask for a retry:

- every level queue gets a leader on a live node; copies keep coming back while
  the node is down (never ``STALL_S`` without one while copies are overdue),
  each measured against its nominal due time (sent + delay);
- the new retries are placed and come back while the node is down;
- (a) the node is started again; (b) it stays down for good and the cluster
  forgets it (each queue keeps a majority, two members of three);
- in both, every message comes back at least once (none lost, none parked, none
  undeliverable); duplicates (at-least-once dead-lettering may repeat a copy)
  are counted, not refused; new retries still go round afterwards.

The figures go to ``build/cluster-ladder.md``.

RabbitMQ before 3.12.5 fails this (:data:`KNOWN_STALL`): within a second of the
kill the ladder stops and holds its copies as dead-lettered, not forwarded. On
such a broker a stuck ladder is an expected failure (xfail, with the figures up
to the stall); anything else that fails is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from aio_backoff import (
    Backoff,
    DelayedPublisher,
    Ladder,
    Retrier,
    parking_queue_name,
    plan_retry,
    retries_done,
)
from aio_backoff.core import LADDER_LEVELS
from tests.cluster.figures import LadderFigures
from tests.cluster.nodes import NODES, Cluster, amqp_url, node_name
from tests.cluster.running import (
    GATE_CLOSED,
    PERMANENT,
    REQUEUED,
    Outcomes,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

COPIES = int(os.environ.get("AIO_BACKOFF_CLUSTER_COPIES", "10000"))
"""Copies in backoff when the node dies. The quorum ladder forwards an expired copy
to the next level at least once: each level's dead-letter worker keeps
``dead_letter_worker_consumer_prefetch`` copies in flight and waits for the next
level's quorum confirm. scripts/cluster.sh sets it to 512, as docs/topology.md
recommends; with RabbitMQ's default of 32 (``AIO_BACKOFF_DLX_PREFETCH=32``) the
10,000 copies still all come back, but those due during the outage come back
p50 8.5 s / p99 19.8 s late instead of 2.3 s / 6.1 s on this 2-core machine."""
MIN_DELAY_MS = 50
MAX_DELAY_MS = 20_000
IN_FLIGHT = 1000
"""Copies the fill keeps unconfirmed at a time."""
NEW = 200
"""Fresh messages that ask for a retry right after the kill."""
NEW_DELAYS_MS = (100, 3000)
AFTER = 50
"""Fresh messages that ask for a retry once the node is back (or forgotten)."""
AFTER_DELAY_MS = 200
HOME = 1
"""Leads the target queue; a Retrier is here."""
OTHER = 2
"""The other Retrier, and the test's publisher."""
VICTIM = 3
"""Leads the ladder's queues, and dies."""
RESTART_AFTER_S = 10.0
"""(a) The restart begins this long after the kill (it takes about ten seconds
more before the node answers AMQP and management; its Erlang VM runs a few
seconds earlier)."""
FORGET_AFTER_S = 2.0
"""(b) The cluster forgets the node this long after the kill."""
DRAIN_S = 90.0
"""How long every copy may take to come back, from the kill."""
PREFETCH = 300
"""Each Retrier's prefetch on the target queue."""
STALL_S = 6.0
"""Nothing back for this long, with copies overdue by as much: the ladder is stuck."""
FIXED_IN = (3, 12, 5)
KNOWN_STALL = (
    "RabbitMQ before 3.12.5 stalls at-least-once dead-lettering when a quorum "
    "leader's node dies: the dead-letter worker a level queue starts on its new "
    "leader publishes to the next level through a queue client whose first call "
    "goes to the node the next level's record still names, the dead one "
    "(rabbit_fifo_client's machine version check); the failed call counts as a "
    "rejection, retried after dead_letter_worker_publisher_confirm_timeout "
    "(180 s) and rejected again as long as no node of that name runs (for good "
    "if it never comes back). Fixed in 3.12.5 by rabbitmq-server commit "
    "27886dd9a2 'QQ: remove machine version 0 check in rabbit_fifo_client'"
)


def stalls_on_leader_loss(version: str) -> bool:
    """Whether RabbitMQ ``version`` has the at-least-once dead-lettering stall of
    :data:`KNOWN_STALL`."""
    numbers = tuple(int(part) for part in version.split(".")[:3] if part.isdigit())
    return numbers < FIXED_IN


class Retry(Backoff):
    """A fresh message's retry: its own delay, given when raised."""

    schedule = (1000,)
    limit = None
    random_sigma = 0


def spread(count: int, low: int, high: int) -> list[int]:
    """``count`` delays from ``high`` down to ``low`` ms, evenly apart."""
    if count == 1:
        return [high]
    return [high - (high - low) * n // (count - 1) for n in range(count)]


def percentiles(values: Iterable[float]) -> str | None:
    """``p50 / p99 / max`` of ``values`` (nearest rank), None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return f"{rank(0.5):.1f} / {rank(0.99):.1f} / {ordered[-1]:.1f}"


@dataclass
class Book:
    """When each message was sent or ran, and when it came back from the ladder."""

    sent: dict[str, tuple[float, int]] = field(default_factory=dict)
    """Copies the fill sent: (when, delay in ms)."""
    delay: dict[str, int] = field(default_factory=dict)
    """Fresh messages: the delay their first run asks for."""
    runs: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Handler runs of fresh messages (a run without a retry header)."""
    back: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Arrivals from the ladder (a run with a retry header)."""
    parked: Counter[str] = field(default_factory=Counter)

    def due(self, key: str) -> float:
        """When ``key`` was due back: sent (or run, for a fresh message: its last
        run before it came back) plus its delay."""
        if key in self.sent:
            when, delay = self.sent[key]
            return when + delay / 1000
        first_back = self.back[key][0] if self.back[key] else float("inf")
        ran = max(run for run in self.runs[key] if run <= first_back)
        return ran + self.delay[key] / 1000

    def returned(self, keys: Iterable[str]) -> int:
        return sum(1 for key in keys if self.back.get(key))

    def back_between(self, keys: Iterable[str], start: float, end: float) -> int:
        return sum(
            1 for key in keys if self.back.get(key) and start <= self.back[key][0] < end
        )

    def lateness(self, keys: Iterable[str]) -> list[float]:
        return [self.back[key][0] - self.due(key) for key in keys if self.back.get(key)]

    def duplicates(self, keys: Iterable[str]) -> int:
        return sum(len(self.back[key]) - 1 for key in keys if self.back.get(key))


@dataclass
class Scenario:
    """The quorum ladder led by node ``VICTIM``, its target led by node ``HOME``."""

    cluster: Cluster
    ladder: Ladder
    target: str
    publishing: AbstractChannel
    """A confirming channel on node ``OTHER`` for the test's own publishes."""
    figures: LadderFigures
    book: Book = field(default_factory=Book)
    retriers: list[Retrier] = field(default_factory=list)
    outcomes: Outcomes = field(default_factory=Outcomes)
    copies: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    version: str = "?"
    """The cluster's RabbitMQ version."""
    killed: float = 0.0
    up: float | None = None
    """When the node answered again (None: still down, or forgotten)."""
    _exchanges: dict[str, AbstractExchange] = field(default_factory=dict)

    @property
    def parking(self) -> str:
        return parking_queue_name(self.target)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """The Retriers' handler: a message back from the ladder is done; a fresh
        one asks for a retry after its own delay."""
        key = message.message_id or "?"
        now = time.monotonic()
        if retries_done(message.headers, self.ladder.delay_exchange) > 0:
            self.book.back[key].append(now)
            return
        self.book.runs[key].append(now)
        raise Retry(delay_ms=self.book.delay.get(key, 1000))

    # -- the ladder's queues ------------------------------------------------------

    async def ladder_queues(self) -> list[dict[str, Any]]:
        queues = await self.cluster.queues("name,leader,members,messages,messages_dlx")
        missing = [name for name in self.ladder.queue_names if name not in queues]
        assert not missing, f"ladder queues missing: {missing}"
        return [queues[name] for name in self.ladder.queue_names]

    async def leaders(self) -> Counter[str]:
        return Counter(str(queue.get("leader")) for queue in await self.ladder_queues())

    async def members(self) -> Counter[str]:
        """How many of the ladder's queues have each set of members."""
        return Counter(
            ", ".join(sorted(str(m).split("@")[0] for m in queue.get("members") or []))
            for queue in await self.ladder_queues()
        )

    async def held(self) -> dict[str, tuple[int, int]]:
        """The ladder's queues and the target that hold messages: (messages, of
        which dead-lettered and not yet forwarded), by the management API."""
        queues = await self.cluster.queues("name,messages,messages_dlx")
        return {
            name: (int(queue.get("messages") or 0), int(queue.get("messages_dlx") or 0))
            for name in [*self.ladder.queue_names, self.target]
            if (queue := queues.get(name, {})).get("messages")
        }

    async def count(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare)."""
        channel = await self.publishing.get_underlay_channel()
        declared = await channel.queue_declare(queue, passive=True)
        return int(declared.message_count or 0)

    # -- publishing -----------------------------------------------------------------

    async def exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            self._exchanges[name] = await self.publishing.get_exchange(
                name, ensure=False
            )
        return self._exchanges[name]

    async def fill(self) -> None:
        """Send ``COPIES`` copies into the ladder as a Retrier would place them,
        ``IN_FLIGHT`` unconfirmed at a time, longest delay first."""
        window = asyncio.Semaphore(IN_FLIGHT)
        ladder = self.ladder
        started = time.monotonic()

        async def send(key: str, delay: int) -> None:
            plan = plan_retry(
                Retry(delay_ms=delay),
                None,
                target_queue=self.target,
                delay_exchange=ladder.delay_exchange,
                topology="ladder",
            )
            assert plan.delay_ms == delay
            message = aio_pika.Message(
                key.encode(),
                message_id=key,
                headers=plan.headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            exchange = await self.exchange(ladder.entry(delay))
            async with window:
                self.book.sent[key] = (time.monotonic(), delay)
                await exchange.publish(
                    message,
                    routing_key=ladder.routing_key(delay, self.target),
                    timeout=60,
                )

        delays = spread(COPIES, MIN_DELAY_MS, MAX_DELAY_MS)
        self.copies = [f"copy.{n}" for n in range(COPIES)]
        await asyncio.gather(*map(send, self.copies, delays))
        self.figures.sent = COPIES
        self.figures.delays = f"{MIN_DELAY_MS} to {MAX_DELAY_MS}, longest first"
        self.figures.fill_s = time.monotonic() - started

    async def publish(self, keys: Sequence[str], delays: Sequence[int]) -> None:
        """Fresh persistent messages to the target, confirmed; each will ask for a
        retry after its delay."""
        exchange = self.publishing.default_exchange
        pending = []
        for key, delay in zip(keys, delays, strict=True):
            self.book.delay[key] = delay
            message = aio_pika.Message(
                key.encode(),
                message_id=key,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            pending.append(exchange.publish(message, routing_key=self.target))
        await asyncio.gather(*pending)

    # -- the node's loss ------------------------------------------------------------

    async def kill(self) -> None:
        """Kill node ``VICTIM``; then ``NEW`` fresh messages ask for a retry."""
        self.figures.leaders = ", ".join(
            f"{name}: {count}" for name, count in (await self.leaders()).items()
        )
        self.killed = time.monotonic()
        self.figures.waiting_at_kill = COPIES - self.book.back_between(
            self.copies, 0.0, self.killed
        )
        await self.cluster.kill(VICTIM)
        self.new = [f"new.{n}" for n in range(NEW)]
        low, high = NEW_DELAYS_MS
        await self.publish(self.new, spread(NEW, low, high))

    async def new_leaders(self) -> None:
        """Wait until every level queue is led by a live node."""
        victim = node_name(VICTIM)

        async def elected() -> bool:
            leaders = await self.leaders()
            return victim not in leaders and "None" not in leaders

        await wait_for(elected, 30, "every ladder queue led by a live node", poll=0.5)
        self.figures.new_leaders_s = time.monotonic() - self.killed

    async def watch(self, until: float | None = None) -> None:
        """Wait until every copy and every fresh message is back (or until
        ``until``, a ``time.monotonic()``), failing as soon as the ladder is stuck:
        nothing came back or ran for ``STALL_S`` while copies are overdue by as
        much. On a broker with the known stall (:func:`stalls_on_leader_loss`) a
        stuck ladder holding dead-lettered copies is an expected failure."""
        keys = [*self.copies, *self.new]
        book = self.book
        progress, moved = -1, time.monotonic()
        while book.returned(keys) < len(keys):
            now = time.monotonic()
            if until is not None and now >= until:
                return
            seen = sum(map(len, book.back.values())) + sum(map(len, book.runs.values()))
            if seen != progress:
                progress, moved = seen, now
            overdue = sum(
                1
                for key in self.copies
                if not book.back.get(key) and book.due(key) < now - STALL_S
            )
            stalled = overdue and now - moved > STALL_S
            if stalled or now > self.killed + DRAIN_S:
                why = (
                    f"nothing came back for {STALL_S} s with {overdue} copies "
                    "overdue by more than that"
                    if stalled
                    else f"not within {DRAIN_S} s of the kill"
                )
                await self.stuck(len(keys) - book.returned(keys), len(keys), why)
            await asyncio.sleep(0.2)

    async def stuck(self, missing: int, total: int, why: str) -> None:
        """Tally what came back so far, then fail (or xfail, see :meth:`watch`)."""
        await self.tally()
        held = await self.held()
        msg = (
            f"{missing} of {total} messages not back: {why}; in the ladder "
            f"(messages, of which dead-lettered and not yet forwarded): {held}"
        )
        if self.figures.dead_lettered_held and stalls_on_leader_loss(self.version):
            pytest.xfail(f"{KNOWN_STALL} ({msg})")
        raise AssertionError(msg)

    async def all_back(self) -> None:
        """:meth:`watch` to the end, then wait until the ladder and the target are
        empty (duplicates arrive by then), and tally."""
        await self.watch()

        async def empty() -> bool:
            return not await self.held()

        await wait_for(empty, 30, "the ladder and the target empty", poll=0.5)
        await self.tally()

    async def tally(self) -> None:
        figures, book = self.figures, self.book
        keys = [*self.copies, *self.new]
        end = self.up if self.up is not None else float("inf")
        due_down = [key for key in self.copies if self.killed <= book.due(key) < end]
        figures.due_while_down = len(due_down)
        figures.back_while_down = book.back_between(self.copies, self.killed, end)
        figures.late_down = percentiles(book.lateness(due_down))
        figures.late_all = percentiles(book.lateness(self.copies))
        figures.new_sent = NEW
        figures.new_back_while_down = book.back_between(self.new, self.killed, end)
        figures.new_late = percentiles(book.lateness(self.new))
        counts = self.outcomes.counts
        figures.new_requeued = counts[REQUEUED]
        figures.new_permanent = counts[PERMANENT]
        figures.gate_closed = counts[GATE_CLOSED]
        figures.uncertain = sum(r.publisher.uncertain_publishes for r in self.retriers)
        figures.handled = book.returned(keys)
        figures.lost = len(keys) - figures.handled
        figures.duplicates = book.duplicates(keys)
        figures.dead_lettered_held = sum(
            int(queue.get("messages_dlx") or 0) for queue in await self.ladder_queues()
        )

    async def after(self, label: str) -> None:
        """``AFTER`` fresh messages ask for a retry and come back."""
        keys = [f"{label}.{n}" for n in range(AFTER)]
        started = time.monotonic()
        await self.publish(keys, [AFTER_DELAY_MS] * AFTER)
        await wait_for(
            lambda: self.book.returned(keys) == AFTER, 30, f"{AFTER} retries {label}"
        )
        self.figures.after = (
            f"{AFTER}/{AFTER} back in {time.monotonic() - started:.1f} s "
            f"({AFTER_DELAY_MS} ms delay)"
        )

    async def declare_while_down(self) -> None:
        """A service on node ``OTHER`` declares the whole ladder again (as
        ``Retrier.consume`` does) while node ``VICTIM`` is down or forgotten."""
        took = await declare_ladder_on(OTHER, self.ladder.delay_exchange)
        self.figures.declare_down = f"done in {took:.1f} s"

    async def note_members(self) -> None:
        """The level queues' members once the node is back or forgotten."""
        self.figures.members_after = "; ".join(
            f"{count} queues: {members}"
            for members, count in (await self.members()).items()
        )

    async def finish(self) -> None:
        """What nothing may have: loss, parking, undeliverable copies."""
        figures = self.figures
        figures.undeliverable = await self.count(self.ladder.undeliverable)
        assert figures.lost == 0, figures
        assert not self.book.parked, f"parked: {self.book.parked}"
        assert figures.undeliverable == 0, figures


async def declare_ladder_on(number: int, delay_exchange: str) -> float:
    """Declare the quorum ladder through a connection to node ``number`` (as a
    service connected there would); seconds it took."""
    connection = await aio_pika.connect(amqp_url(number), timeout=10)
    async with connection:
        channel = await connection.channel()
        publisher = DelayedPublisher(
            channel,
            topology="ladder",
            queue_type="quorum",
            delay_exchange=delay_exchange,
        )
        started = time.monotonic()
        try:
            await publisher.declare()
        finally:
            await publisher.close()
        return time.monotonic() - started


@pytest.fixture
async def scenario(
    whole_cluster: Cluster,
    ladder_figures: LadderFigures,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Scenario]:
    cluster = whole_cluster
    library = logging.getLogger("aio_backoff")
    test = request.node.name.removeprefix("test_")[:30]
    run_id = uuid.uuid4().hex[:6]
    ladder = Ladder(f"test.cluster-ladder.{run_id}", "quorum")
    target = f"cluster.{test}.{run_id}"
    connections: list[AbstractRobustConnection] = []
    run: Scenario | None = None
    try:
        await declare_ladder_on(VICTIM, ladder.delay_exchange)

        async def led_by_victim() -> bool:
            queues = await cluster.queues()
            return all(
                queues.get(name, {}).get("leader") == node_name(VICTIM)
                for name in ladder.queue_names
            )

        await wait_for(
            led_by_victim, 10, f"every queue of {ladder.prefix} led by node {VICTIM}"
        )

        for number in (HOME, OTHER):
            connections.append(
                await aio_pika.connect_robust(
                    f"{amqp_url(number)}?reconnect_interval=0.5", timeout=10
                )
            )
        home, other = connections
        publishing = await other.channel(publisher_confirms=True)
        setup = await home.channel()
        declared = await setup.declare_queue(
            target, durable=True, arguments={"x-queue-type": "quorum"}
        )
        assert await cluster.queue_node(target) == node_name(HOME)
        binding = ladder.target_binding(target)
        await declared.bind(binding.source, binding.routing_key)
        run = Scenario(cluster, ladder, target, publishing, ladder_figures)
        run.version = await asyncio.to_thread(cluster.rabbitmq_version)

        # the library parks in an existing parking queue as it is; the test
        # counts what arrives there (nothing should)
        parking = await setup.declare_queue(run.parking, durable=True)
        book = run.book

        async def take_parked(message: AbstractIncomingMessage) -> None:
            book.parked[message.message_id or "?"] += 1
            await message.ack()

        await parking.consume(take_parked)

        for connection in connections:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(target, passive=True)
            retrier = Retrier(
                channel,
                backoff=Retry,
                topology="ladder",
                queue_type="quorum",
                delay_exchange=ladder.delay_exchange,
            )
            run.retriers.append(retrier)
            await retrier.consume(queue, run.handle)
        library.addHandler(run.outcomes)
        library.propagate = False
        library.setLevel(logging.INFO)
        yield run
    finally:
        if run is not None:
            library.removeHandler(run.outcomes)
            library.propagate = True
            library.setLevel(logging.NOTSET)
            for retrier in run.retriers:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await retrier.stop(timeout=2)
        for connection in connections:
            await connection.close()
        await cluster.heal()  # the queues can be deleted once their nodes run
        for name in (target, parking_queue_name(target), *ladder.queue_names):
            await cluster.delete_queue(name)
        for level in range(LADDER_LEVELS):
            await cluster.delete_exchange(ladder.level(level))
        for name in (ladder.deliver_exchange, ladder.undeliverable):
            await cluster.delete_exchange(name)


def check_outage(scenario: Scenario) -> None:
    """Copies and new retries came back while the node was down."""
    figures = scenario.figures
    assert figures.back_while_down, (
        f"no copy came back while the node was down: {figures}"
    )
    assert figures.new_back_while_down, (
        f"no new retry was placed and back while the node was down: {figures}"
    )


async def test_leader_node_restarted(
    scenario: Scenario, whole_cluster: Cluster
) -> None:
    """(a) Killed while the copies wait, started again ``RESTART_AFTER_S`` later:
    the ladder takes a fresh declare while it is down, copies and new retries
    come back while it is down, none is lost."""
    scenario.figures.scenario = "leader node killed, then restarted"
    await scenario.fill()
    await scenario.kill()
    await scenario.new_leaders()
    await scenario.declare_while_down()
    await scenario.watch(until=scenario.killed + RESTART_AFTER_S)
    await whole_cluster.restart(VICTIM)
    scenario.up = time.monotonic()
    scenario.figures.down_s = scenario.up - scenario.killed
    await scenario.note_members()
    await scenario.all_back()
    check_outage(scenario)
    await scenario.after("after-restart")
    await scenario.finish()


async def test_leader_node_forgotten(
    scenario: Scenario, whole_cluster: Cluster
) -> None:
    """(b) Killed while the copies wait and never started again: the cluster
    forgets it; the ladder (two members left per queue) takes a fresh declare,
    copies and new retries come back, none is lost."""
    scenario.figures.scenario = "leader node killed, then forgotten"
    await scenario.fill()
    await scenario.kill()
    await scenario.new_leaders()
    await scenario.watch(until=scenario.killed + FORGET_AFTER_S)
    await whole_cluster.forget(VICTIM)
    await scenario.note_members()
    await scenario.declare_while_down()
    await scenario.all_back()
    check_outage(scenario)
    await scenario.after("after-forget")
    await scenario.finish()
    live = {node_name(n) for n in NODES if n != VICTIM}
    assert set(await scenario.leaders()) <= live
