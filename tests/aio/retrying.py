"""Helpers for the consumer and publisher tests: fast policies, recorders, queues."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from aio_backoff import Backoff, FailurePolicy, Retrier, backoff_class
from tests.aio_fixtures import Declared, drop_ladders

FAST_FAILURES = FailurePolicy(
    max_transient_tries=3, first_pause_s=0.05, max_pause_s=0.2
)
"""Short pauses for tests that are not about the pauses themselves."""


def fast_backoff(
    schedule: Any = (20,), limit: int | None = 3, name: str = "FastBackoff"
) -> type[Backoff]:
    """A Backoff subclass with a millisecond schedule and no jitter."""
    policy = backoff_class(schedule=schedule, limit=limit, random_sigma=0, name=name)
    policy.limit = limit  # backoff_class reads None as "keep the base's limit"
    return policy


@dataclass
class Call:
    at: float
    retries: Any
    message: AbstractIncomingMessage


@dataclass
class Recorder:
    """Records every handler invocation; ``wait(n)`` until there were ``n``."""

    started: float = field(default_factory=time.monotonic)
    calls: list[Call] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, message: AbstractIncomingMessage) -> int:
        """Record a call; returns how many there were before it."""
        self.calls.append(
            Call(
                at=time.monotonic() - self.started,
                retries=(message.headers or {}).get("backoff-retries"),
                message=message,
            )
        )
        self._changed.set()
        return len(self.calls) - 1

    async def wait(self, count: int, seconds: float = 10) -> None:
        async with asyncio.timeout(seconds):
            while len(self.calls) < count:
                self._changed.clear()
                await self._changed.wait()

    async def settle(self, seconds: float = 0.3) -> None:
        """Wait a little to see that no further call comes."""
        await asyncio.sleep(seconds)


def handler_failing(
    recorder: Recorder,
    times: int,
    error: Callable[[int], BaseException] = lambda _: Backoff(),
) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    """A handler that raises ``error(n)`` on its first ``times`` calls."""

    async def handle(message: AbstractIncomingMessage) -> None:
        index = recorder.record(message)
        if index < times:
            raise error(index)

    return handle


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The error-level records the library logged."""
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name.startswith("aio_backoff")
    ]


async def publish(
    channel: AbstractChannel, queue: str, body: bytes = b"payload", **properties: Any
) -> None:
    await channel.default_exchange.publish(
        aio_pika.Message(body, **properties), routing_key=queue
    )


async def get_one(queue: AbstractQueue, seconds: float = 5) -> AbstractIncomingMessage:
    """The next message on ``queue``, polling (``queue.get`` does not wait)."""
    async with asyncio.timeout(seconds):
        while True:
            message = await queue.get(fail=False)
            if message is not None:
                return message
            await asyncio.sleep(0.01)


@pytest.fixture
async def target(channel: AbstractChannel, declared: Declared, unique_name: Any) -> Any:
    """A fresh durable queue the tests consume from."""
    name = declared.queue(unique_name("target"))
    return await channel.declare_queue(name, durable=True)


@pytest.fixture
async def make_retrier(
    channel: AbstractChannel, connection: AbstractRobustConnection
) -> AsyncIterator[Callable[..., Retrier]]:
    made: list[Retrier] = []

    def make(**kwargs: Any) -> Retrier:
        kwargs.setdefault("backoff", fast_backoff())
        kwargs.setdefault("failure_policy", FAST_FAILURES)
        retrier = Retrier(channel, **kwargs)
        made.append(retrier)
        return retrier

    yield make
    for retrier in made:
        await retrier.close()
    await drop_ladders(connection, (retrier.publisher for retrier in made))
