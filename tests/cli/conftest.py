"""Fixtures for the command line's tests: the aio-pika ones (unique names,
``declared`` for cleanup) and ``cli``, which runs ``aio-backoff`` against the broker
under test and keeps its exit code and output."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from aio_backoff.cli import main
from tests import brokers
from tests.aio_fixtures import *  # noqa: F403


@dataclass(frozen=True)
class Ran:
    """What one ``aio-backoff`` run did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Awaitable[Ran]]


def broker_options(broker: brokers.Broker) -> list[str]:
    """``--url`` and ``--management-url`` of the broker under test."""
    return ["--url", broker.amqp_url, "--management-url", broker.api_url]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], broker: brokers.Broker) -> Cli:
    """``await cli("status", "--json")``: ``main()`` in a thread (it runs its own
    event loop), with the broker under test's options appended unless
    ``broker=False``; returns a :class:`Ran`."""

    async def run(*argv: str, with_broker: bool = True) -> Ran:
        args = [*argv, *(broker_options(broker) if with_broker else [])]
        capsys.readouterr()
        code = await asyncio.to_thread(main, args)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run
