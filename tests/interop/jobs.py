"""The jobs of the interop matrix, and the asyncio side's handlers for them.

A job ``{"key": str, "failures": int}`` backs off while its message has been retried
fewer than ``failures`` times, then succeeds (the same rule as the nameko services
in ``services/nameko_services.py``). ``OK`` jobs back off twice then succeed;
``DOOMED`` jobs expire at the limit (3).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from aio_backoff import (
    ExpiredMessage,
    backoff_class,
    current_call,
    park,
    retries_done,
)
from tests import brokers

Fast = backoff_class(schedule=(50,), limit=3, random_sigma=0, name="Fast")
"""The matrix schedule (as ``Fast`` on the nameko side): 50 ms, 3 retries."""
Shared = backoff_class(schedule=(30,), limit=6, random_sigma=0, name="Shared")
"""For the queue shared with a nameko service (``Shared`` there): 30 ms, 6 retries."""

OK_FAILURES = 2
DOOMED_FAILURES = 99
OK_ATTEMPTS = [(0, "Fast"), (1, "Fast"), (2, "ok")]
DOOMED_ATTEMPTS = [(0, "Fast"), (1, "Fast"), (2, "Fast"), (3, "Expired")]

Record = dict[str, Any]
Records = Callable[[str], list[Record]]
"""A job's key -> the records of its deliveries (a report's or a side's)."""


def new_job(failures: int, label: str = "job") -> dict[str, Any]:
    return {"key": f"{label}-{uuid.uuid4().hex[:8]}", "failures": failures}


def ok_and_doomed() -> tuple[dict[str, Any], dict[str, Any]]:
    """A job that backs off twice and then succeeds, and one that expires."""
    return new_job(OK_FAILURES, "ok"), new_job(DOOMED_FAILURES, "doomed")


def ok_and_doomed_done(
    records: Records, ok: Mapping[str, Any], doomed: Mapping[str, Any]
) -> Callable[[], bool]:
    """For ``wait_until``: ``ok`` has succeeded and ``doomed`` has expired."""
    return lambda: (
        any(r["outcome"] == "ok" for r in records(ok["key"]))
        and any(r["outcome"] == "Expired" for r in records(doomed["key"]))
    )


def check_ok_and_doomed(
    records: Records,
    ok: Mapping[str, Any],
    doomed: Mapping[str, Any],
    *,
    nameko_handled: bool,
    doomed_attempts: list[tuple[int, str]] = DOOMED_ATTEMPTS,
) -> None:
    """``ok`` backed off twice then succeeded; ``doomed`` went ``doomed_attempts``."""
    assert attempts(records(ok["key"])) == OK_ATTEMPTS
    assert attempts(records(doomed["key"])) == doomed_attempts
    if nameko_handled and brokers.current().major >= 4:
        # RabbitMQ 4.x: x-death stays at 1, our header carries the count
        assert max(r["x_death"] for r in records(doomed["key"])) <= 1


async def publish_job(channel: AbstractChannel, queue: str, job: Any) -> None:
    """Publish ``job`` to ``queue`` as a persistent JSON message from asyncio."""
    await channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps(job).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=queue,
    )


def attempts(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """``(retries, outcome)`` per delivery, in order of retries.

    The asyncio side records a handler's last ``Backoff`` and then the expiry as two
    records; nameko records one worker whose outcome is ``Expired``: merged here.
    """
    merged: list[tuple[int, str]] = []
    for record in sorted(
        records, key=lambda r: (r["retries"], r["outcome"] == "Expired")
    ):
        step = (record["retries"], record["outcome"])
        if merged and step[1] == "Expired" and merged[-1][0] == step[0]:
            merged[-1] = step
        else:
            merged.append(step)
    return merged


class AioSide:
    """Handlers of the asyncio side, recording what they see like nameko's report."""

    def __init__(self, backoff: type = Fast) -> None:
        self.backoff = backoff
        self.records: list[Record] = []

    def for_key(self, key: str) -> list[Record]:
        return [record for record in self.records if record["key"] == key]

    def _attempt(self, job: Mapping[str, Any], retries: int, stack: Any = None) -> Any:
        record = {
            "side": "asyncio",
            "key": job["key"],
            "retries": retries,
            "call_id_stack": stack,
        }
        if retries < job["failures"]:
            self.records.append({**record, "outcome": self.backoff.__name__})
            raise self.backoff()
        self.records.append({**record, "outcome": "ok"})
        return {"key": job["key"], "retries": retries, "side": "asyncio"}

    async def work(self, job: dict[str, Any]) -> Any:
        """An RPC method / event handler of a NamekoService."""
        call = current_call()
        assert call is not None
        return self._attempt(job, call.retries, list(call.call_id_stack))

    async def consume(self, message: AbstractIncomingMessage) -> None:
        """A Retrier handler for plain queue messages."""
        self._attempt(json.loads(message.body), retries_done(message.headers))

    async def on_expired(self, expired: ExpiredMessage) -> None:
        """Record the expiry, then park the message (the default action)."""
        job = json.loads(expired.message.body)
        self.records.append(
            {
                "side": "asyncio",
                "key": job["key"],
                "retries": retries_done(expired.message.headers),
                "outcome": "Expired",
            }
        )
        await park(expired)

    def done(self, key: str, last: str) -> Callable[[], bool]:
        return lambda: any(r["outcome"] == last for r in self.for_key(key))
