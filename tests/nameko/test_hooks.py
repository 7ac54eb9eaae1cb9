"""nameko_bridge tells the same hooks as the asyncio stack (docs/observability.md)."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from nameko.testing.services import entrypoint_waiter

from aio_backoff import Hooks
from aio_backoff.events import CameBack, Expired, Scheduled
from nameko_bridge import Backoff
from nameko_bridge.backoff import HOOKS_CONFIG_KEY
from nameko_bridge.messaging import consume

from .conftest import raised_expired

pytestmark = pytest.mark.timeout(30)

SEEN: list[Any] = []
HOOKS = Hooks(every=SEEN.append)
"""Named by ``"tests.nameko.test_hooks:HOOKS"`` in the config of one test."""


@pytest.mark.parametrize("given", ["object", "dotted path"])
def test_the_bridge_tells_scheduled_came_back_and_expired(
    container_factory, rabbit_config, publish_message, exchange, queue, given
):
    SEEN.clear()

    class Service:
        name = "service"

        @consume(queue)
        def method(self, payload):
            raise Backoff()

    hooks = HOOKS if given == "object" else "tests.nameko.test_hooks:HOOKS"
    container = container_factory(Service, {**rabbit_config, HOOKS_CONFIG_KEY: hooks})
    container.start()

    with (
        patch.object(Backoff, "limit", new=2),
        entrypoint_waiter(container, "method", callback=raised_expired) as result,
    ):
        publish_message(exchange, "msg", routing_key=queue.routing_key)
    with pytest.raises(Backoff.Expired):
        result.get()

    scheduled = [event for event in SEEN if isinstance(event, Scheduled)]
    assert [(e.queue, e.attempt, e.limit) for e in scheduled] == [
        (queue.name, 1, 2),
        (queue.name, 2, 2),
    ]
    assert all(e.exception_type == "Backoff" for e in scheduled)
    assert all(e.delay_ms > 0 for e in scheduled)
    back = [event for event in SEEN if isinstance(event, CameBack)]
    assert [(e.queue, e.attempt) for e in back] == [(queue.name, 1), (queue.name, 2)]
    assert all(e.lateness_ms is not None and 0 <= e.lateness_ms < 5000 for e in back)
    [spent] = [event for event in SEEN if isinstance(event, Expired)]
    assert (spent.queue, spent.attempt, spent.limit) == (queue.name, 2, 2)
    assert SEEN.index(spent) > SEEN.index(scheduled[-1])


def test_a_bad_hooks_setting_fails_when_the_container_is_made(
    container_factory, rabbit_config, queue
):
    class Service:
        name = "service"

        @consume(queue)
        def method(self, payload):
            raise Backoff()

    with pytest.raises(ValueError, match="cannot import"):
        container_factory(
            Service, {**rabbit_config, HOOKS_CONFIG_KEY: "no.such.module:HOOKS"}
        ).start()
