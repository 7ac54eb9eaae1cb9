"""nameko_bridge services on the plugin topology (``BACKOFF_TOPOLOGY: plugin``), on a
broker with the delayed-message-exchange plugin: ``plugin_config``, a vhost of its own
on ``AIO_BACKOFF_PLUGIN_AMQP_URL`` (``scripts/pluginbroker.sh``); skipped when no such
broker is named.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from kombu.messaging import Exchange, Queue
from nameko.testing import rabbit
from nameko.testing.services import entrypoint_waiter

from aio_backoff import parking_queue_name, retries_done
from aio_backoff.core import DelayedExchange
from nameko_bridge import Backoff, BackoffPublisher
from nameko_bridge.backoff import TOPOLOGY_CONFIG_KEY
from nameko_bridge.messaging import Consumer
from tests import brokers

from .conftest import publish_to, raised

pytestmark = pytest.mark.timeout(30)

SCHEDULE = (5, 100, 200, 500)
"""5 ms is below 128, an int pamqp would send as a signed byte that the plugin does
not take as a delay; both stacks send the decimal string (``x_delay``)."""
LATE_MS = 500
"""How late a copy may come back on a busy machine."""


class Impatient(Backoff):
    schedule = SCHEDULE
    limit = len(SCHEDULE)


def test_the_plugin_brings_each_copy_back_after_its_delay(
    container_factory: Callable[..., Any], plugin_config: dict[str, Any]
) -> None:
    queue = Queue("jobs", durable=True)
    # (when, retries, the exchange it came from) of each delivery
    deliveries: list[tuple[float, int, str]] = []

    class Recording(Consumer):  # type: ignore[misc]
        def handle_message(self, body: Any, message: Any) -> None:
            deliveries.append(
                (
                    time.monotonic(),
                    retries_done(message.headers),
                    message.delivery_info["exchange"],
                )
            )
            super().handle_message(body, message)

    class Service:
        name = "plugin_service"

        @Recording.decorator(queue)
        def method(self, payload: Any) -> None:
            raise Impatient

    container = container_factory(
        Service, {**plugin_config, TOPOLOGY_CONFIG_KEY: "plugin"}
    )
    container.start()
    with entrypoint_waiter(
        container, "method", callback=raised(Backoff.Expired), timeout=10
    ):
        publish_to(plugin_config)(Exchange(""), "job", routing_key=queue.name)

    assert [retries for _, retries, _ in deliveries] == [0, 1, 2, 3, 4]
    gaps = [round((b - a) * 1000) for (a, *_), (b, *_) in pairwise(deliveries)]
    for gap, delay in zip(gaps, SCHEDULE, strict=True):
        assert delay <= gap <= delay + LATE_MS, (gaps, SCHEDULE)
    # every copy waited in the plugin's exchange: no ladder, no per-delay queue;
    # the message was parked when its retries were spent
    delayed = DelayedExchange(BackoffPublisher.delay_exchange).name
    assert [exchange for *_, exchange in deliveries] == ["", *[delayed] * 4]
    broker = brokers.plugin()
    assert broker is not None
    api = rabbit.Client(broker.api_url)
    types = {e["name"]: e["type"] for e in api.get_exchanges(plugin_config["vhost"])}
    assert types[delayed] == "x-delayed-message"
    queues = {q["name"] for q in api.get_queues(plugin_config["vhost"])}
    assert queues == {queue.name, parking_queue_name(queue.name)}, queues
