"""What happened to every message a scenario sent, and the row it reports.

Each message carries an id (its ``message_id``, or its ``correlation_id`` for an RPC
request). The handler tells the ledger when it runs and when it succeeds; messages
that end in a parking or dead-letter queue are read from there. At the end:

- *succeeded*: ids the handler finished at least once;
- *duplicates*: extra successes of the same id, plus ids that both succeeded and
  were parked;
- *parked or dead-lettered*: ids kept in a parking or dead-letter queue (and never
  finished);
- *lost*: ids that are neither, once the scenario's time is up.

No aio-pika import: the consumer subprocess writes the same records.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.faults.node import FaultNode

HOT_LOOP_RUNS_PER_SECOND = 4
"""More runs than this of one message within one second is a hot loop. The
engine's own pauses (FailurePolicy: 0.25 s, doubling) allow three; a requeue loop
runs a handler hundreds of times a second."""


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    sent: int
    succeeded: int
    duplicates: int
    parked: int
    lost: int
    broker: str
    result: str = "not run"

    HEADER = (
        "| scenario | sent | succeeded | duplicates | parked or dead-lettered "
        "| lost | broker | result |\n|---|--:|--:|--:|--:|--:|---|---|"
    )

    def markdown(self) -> str:
        return (
            f"| {self.scenario} | {self.sent} | {self.succeeded} | {self.duplicates} "
            f"| {self.parked} | {self.lost} | {self.broker} | {self.result} |"
        )


def table(rows: Iterable[Row]) -> str:
    return "\n".join([Row.HEADER, *(row.markdown() for row in rows)]) + "\n"


def message_id_of(message: dict[str, Any]) -> str | None:
    """The id of a message read through the management API: its ``message_id``."""
    return message.get("properties", {}).get("message_id")


def correlation_id_of(message: dict[str, Any]) -> str | None:
    return message.get("properties", {}).get("correlation_id")


@dataclass
class Ledger:
    """The accounts of one scenario."""

    scenario: str
    node: FaultNode
    broker: str
    sent: list[str] = field(default_factory=list)
    successes: Counter[str] = field(default_factory=Counter)
    runs: defaultdict[str, list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    parked: Counter[str] = field(default_factory=Counter)
    kept_in: list[tuple[str, Callable[[dict[str, Any]], str | None]]] = field(
        default_factory=list
    )
    """(queue, id reader) of each parking or dead-letter queue to read."""
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- recording -------------------------------------------------------------

    def new_ids(self, count: int, label: str = "m") -> list[str]:
        start = len(self.sent)
        ids = [f"{self.scenario}.{label}.{start + n}" for n in range(count)]
        self.sent.extend(ids)
        return ids

    def ran(self, key: str) -> int:
        """Record a handler run of ``key``; how many runs it had before this one."""
        runs = self.runs[key]
        runs.append(time.monotonic())
        return len(runs) - 1

    def run_count(self) -> int:
        """Handler runs so far, of all ids."""
        return sum(len(times) for times in self.runs.values())

    def succeeded(self, key: str) -> None:
        self.successes[key] += 1
        self._changed.set()

    def watch(
        self,
        queue: str,
        read_id: Callable[[dict[str, Any]], str | None] = message_id_of,
    ) -> None:
        """Count messages in ``queue`` (a parking or dead-letter queue) as kept."""
        self.kept_in.append((queue, read_id))

    async def read_kept(self) -> None:
        """Read the ids in the watched queues (they stay there)."""
        seen: Counter[str] = Counter()
        for queue, read_id in self.kept_in:
            # as many as could be there, not the queue's "messages_ready": the
            # management API's counts lag a few seconds behind the messages
            for message in await self.node.peek(queue, 2 * len(self.sent) + 10):
                key = read_id(message)
                if key is not None:
                    seen[key] += 1
        self.parked = seen

    # -- waiting -----------------------------------------------------------------

    def unsettled(self) -> list[str]:
        """Sent ids that neither succeeded nor were kept."""
        return [
            key
            for key in self.sent
            if key not in self.successes and key not in self.parked
        ]

    async def wait_settled(
        self,
        seconds: float,
        *,
        poll: float = 0.5,
        hopeless: Callable[[], bool] = lambda: False,
    ) -> bool:
        """Wait until every sent id succeeded or was kept, at most ``seconds`` (or
        until ``hopeless()``); whether they all were."""
        deadline = time.monotonic() + seconds
        while True:
            if self.kept_in:
                await self.read_kept()
            if not self.unsettled():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or hopeless():
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(min(poll, left)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def wait_successes(self, count: int, seconds: float) -> None:
        """Wait until ``count`` ids succeeded (or fail saying how many did)."""
        try:
            async with asyncio.timeout(seconds):
                while len(self.successes) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            msg = f"{len(self.successes)} of {count} ids succeeded within {seconds} s"
            raise AssertionError(msg) from None

    # -- the row -------------------------------------------------------------------

    def row(self) -> Row:
        sent = set(self.sent)
        succeeded = {key for key in self.successes if key in sent}
        parked = {key for key in self.parked if key in sent}
        duplicates = sum(count - 1 for count in self.successes.values())
        duplicates += sum(count - 1 for count in self.parked.values())
        duplicates += len(succeeded & parked)
        return Row(
            scenario=self.scenario,
            sent=len(sent),
            succeeded=len(succeeded),
            duplicates=duplicates,
            parked=len(parked - succeeded),
            lost=len(sent - succeeded - parked),
            broker=self.broker,
        )

    def hot_loops(self, limit: int = HOT_LOOP_RUNS_PER_SECOND) -> dict[str, int]:
        """Ids that ran more than ``limit`` times within one second, with their
        highest count in any one-second window."""
        found = {}
        for key, times in self.runs.items():
            most = max_in_window(times, 1.0)
            if most > limit:
                found[key] = most
        return found

    def assert_all_kept(self) -> None:
        """Nothing lost, and no message ran in a hot loop."""
        assert self.row().lost == 0, self.describe()
        loops = self.hot_loops()
        assert not loops, (
            f"hot loop: runs of one message within one second (more than "
            f"{HOT_LOOP_RUNS_PER_SECOND}): {dict(list(loops.items())[:3])}"
        )

    def describe(self) -> str:
        """For assertion messages: the figures and a few lost ids."""
        row = self.row()
        missing = [
            key.rsplit(".", 2)[-2] + "." + key.rsplit(".", 1)[-1]
            for key in self.unsettled()[:3]
        ]
        return (
            f"lost {row.lost} of {row.sent} (succeeded {row.succeeded}, parked "
            f"{row.parked}, duplicates {row.duplicates})"
            + (f", e.g. {missing}" if missing else "")
        )


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` (sorted) that fall within any ``window`` seconds."""
    most = 0
    start = 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most
