"""Shared by both test processes (asyncio and nameko): no aio-pika or nameko import."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests import brokers

# No per-example deadline (200 ms by default): on a loaded CI machine, under coverage
# and next to other test lanes, examples took longer and failed as Flaky. No example
# database: the Python 3.11 and 3.13 lanes run the same tests side by side in one
# checkout, and replaying an example the other process saved failed as
# FlakyStrategyDefinition ("Inconsistent data generation").
settings.register_profile("aio-backoff", deadline=None, database=None)
settings.load_profile("aio-backoff")


def pytest_report_header() -> str:
    broker = brokers.current()
    return f"aio-backoff broker: {broker.name} at {broker.amqp_url}"


@pytest.fixture(scope="session")
def broker() -> brokers.Broker:
    return brokers.current()
