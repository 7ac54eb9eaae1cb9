"""prometheus-client: a fresh registry sees the same figures as OpenTelemetry."""

from __future__ import annotations

from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from prometheus_client import CollectorRegistry, generate_latest

from aio_backoff.events import NotPlaced, Replayed
from aio_backoff.prometheus import METRICS, prometheus_hooks
from tests.observability.scenario import retried_twice_then_parked

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def test_the_registry_sees_retries_expiry_parking_delay_and_lateness(
    channel: AbstractChannel, target: AbstractQueue, make_retrier: Any, declared: Any
) -> None:
    registry = CollectorRegistry()
    hooks = prometheus_hooks(registry)
    await retried_twice_then_parked(channel, target, make_retrier, declared, hooks)
    hooks.not_placed[0](
        NotPlaced(target.name, "m", 1, 2, 30, permanent=False, reason="closed")
    )
    hooks.replayed[0](Replayed(target.name, "m", "backoff.undeliverable"))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": target.name, **labels})

    assert value("aio_backoff_retries_total", exception="Twice") == 2
    assert value("aio_backoff_expired_total", exception="Twice") == 1
    assert value("aio_backoff_parked_total") == 1
    assert value("aio_backoff_not_placed_total", permanent="false") == 1
    assert value("aio_backoff_replayed_total") == 1
    assert value("aio_backoff_delay_seconds_count") == 2
    assert value("aio_backoff_delay_seconds_sum") == pytest.approx(0.06)
    assert value("aio_backoff_delay_seconds_bucket", le="0.05") == 2
    assert value("aio_backoff_lateness_seconds_count") == 2
    lateness = value("aio_backoff_lateness_seconds_sum")
    assert lateness is not None
    assert 0 <= lateness < 10
    exposed = generate_latest(registry).decode()
    for name in METRICS:
        assert f"\n{name}" in exposed
