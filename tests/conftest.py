"""Shared by both test processes (asyncio and nameko): no aio-pika or nameko import."""

from __future__ import annotations

import pytest

from tests import brokers


def pytest_report_header() -> str:
    broker = brokers.current()
    return f"aio-backoff broker: {broker.name} at {broker.amqp_url}"


@pytest.fixture(scope="session")
def broker() -> brokers.Broker:
    return brokers.current()
