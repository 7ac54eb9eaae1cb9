"""What a nameko-amqp-retry suite still finds after renaming the import.

Found by running nameko-amqp-retry's own test suite against ``nameko_bridge``:

- ``Backoff.Expired`` keeps its old name. nameko-amqp-retry's tracebacks print
  ``nameko_amqp_retry.backoff.Backoff.Expired`` and an RPC error's ``exc_path`` is
  ``nameko_amqp_retry.backoff.Expired``; after the rename those are
  ``nameko_bridge.backoff...``, whichever ``Backoff`` (ours or the core's) the
  entrypoint raised. It stays an ``aio_backoff.Backoff.Expired``.
- The names its modules held: ``decorators.backoff_factory``, ``rpc.Backoff``,
  ``messaging.Backoff``; ``entrypoint_retry(retry_for=())`` retries every error.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from types import SimpleNamespace
from unittest.mock import patch

import pytest
from kombu.messaging import Exchange, Queue
from nameko.exceptions import (
    deserialize_to_instance,
    get_module_path,
    registry,
)
from nameko.testing.services import entrypoint_waiter

import aio_backoff
import nameko_bridge.messaging
import nameko_bridge.rpc
from nameko_bridge import Backoff
from nameko_bridge.backoff import as_nameko_expired
from nameko_bridge.decorators import backoff_factory, entrypoint_retry
from nameko_bridge.messaging import consume
from nameko_bridge.rpc import rpc

from .conftest import backoff_from_not_yet

pytestmark = pytest.mark.timeout(30)


class CoreBackoff(aio_backoff.Backoff):
    """The asyncio side's Backoff, raised in a nameko entrypoint."""

    schedule = (20,)
    random_sigma = 0
    limit = 1


def spent(backoff: aio_backoff.Backoff) -> aio_backoff.Backoff.Expired:
    """The Expired that ``backoff`` raises for a message with its retries spent."""
    with pytest.raises(aio_backoff.Backoff.Expired) as raised:
        backoff.compute_next(retries=100)
    return raised.value


class TestExpiredClass:
    def test_named_like_the_old_module(self):
        assert Backoff.Expired.__module__ == "nameko_bridge.backoff"
        assert Backoff.Expired.__qualname__ == "Backoff.Expired"
        assert Backoff.Expired.__name__ == "Expired"

    def test_caught_as_the_cores_expired(self):
        with pytest.raises(aio_backoff.Backoff.Expired) as raised:
            Backoff().compute_next(retries=Backoff.limit)
        assert type(raised.value) is Backoff.Expired
        assert isinstance(raised.value.__cause__, Backoff)

    def test_next_raises_it_when_the_retries_are_spent(self):
        class Limited(Backoff):
            limit = 2

        message = SimpleNamespace(headers={"backoff-retries": 2})
        with pytest.raises(Backoff.Expired, match="aborted after '2' retries"):
            Limited().next(message, "backoff")

    def test_ours_is_returned_as_it_is(self):
        expired = spent(Backoff())
        assert as_nameko_expired(expired) is expired

    def test_the_cores_is_copied_with_everything(self):
        core = spent(CoreBackoff())
        assert type(core) is aio_backoff.Backoff.Expired

        converted = as_nameko_expired(core)

        assert type(converted) is Backoff.Expired
        assert converted.args == core.args
        assert (converted.retries, converted.limit, converted.max_delay_ms) == (
            100,
            1,
            20.0,
        )
        assert converted.__cause__ is core.__cause__
        assert isinstance(converted.__cause__, CoreBackoff)
        assert converted.__suppress_context__ is True
        assert converted.__traceback__ is core.__traceback__


@pytest.fixture
def expired_deserialized() -> Iterator[None]:
    """Callers rebuild ``Backoff.Expired`` from its ``exc_path`` (nameko's
    ``deserialize_to_instance``), as a client of nameko-amqp-retry could."""
    key = get_module_path(Backoff.Expired)
    assert key not in registry
    deserialize_to_instance(Backoff.Expired)
    yield
    del registry[key]


@pytest.mark.usefixtures("expired_deserialized")
def test_rpc_caller_rebuilds_expired_from_the_old_exc_path(start_service, rpc_proxy):
    class Service:
        name = "service"

        @rpc
        def ours(self):
            raise type("Limited", (Backoff,), {"limit": 1, "schedule": (20,)})()

        @rpc
        def core(self):
            raise CoreBackoff()

    start_service(Service)

    assert get_module_path(Backoff.Expired) == "nameko_bridge.backoff.Expired"
    for method in (rpc_proxy.service.ours, rpc_proxy.service.core):
        with pytest.raises(Backoff.Expired, match="aborted after '1' retries"):
            method()


def test_consume_reports_our_expired_for_the_cores_backoff(
    start_service, publish_message, entrypoint_tracker
):
    exchange = Exchange("core-messages")
    queue = Queue("core-messages", exchange=exchange, routing_key="core")

    class Service:
        name = "service"

        @consume(queue)
        def handle(self, payload):
            backoff_from_not_yet(CoreBackoff)

    container = start_service(Service)

    def until_expired(worker_ctx, result, exc_info):
        entrypoint_tracker.track(result=result, exc_info=exc_info)
        return exc_info is not None and issubclass(
            exc_info[0], aio_backoff.Backoff.Expired
        )

    with entrypoint_waiter(container, "handle", callback=until_expired):
        publish_message(exchange, "msg", routing_key="core")

    assert entrypoint_tracker.exception_types() == [CoreBackoff, Backoff.Expired]
    exc_type, exc, tb = entrypoint_tracker.get_exceptions()[-1]
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    assert "NotYet: try again later" in stack
    assert "CoreBackoff" in stack
    assert "nameko_bridge.backoff.Backoff.Expired: Backoff aborted after" in stack


class TestModuleNames:
    def test_entrypoint_modules_hold_backoff(self):
        assert nameko_bridge.rpc.Backoff is Backoff
        assert nameko_bridge.messaging.Backoff is Backoff

    def test_backoff_factory_reads_the_defaults_when_called(self):
        with patch.object(Backoff, "limit", 7):
            made = backoff_factory(schedule=(5, 10), retry_for=KeyError)
        assert issubclass(made, Backoff)
        assert made.__name__ == "CustomBackoff"
        assert (made.schedule, made.limit) == ((5, 10), 7)
        assert made.random_sigma == Backoff.random_sigma
        assert made.random_groups_per_sigma == Backoff.random_groups_per_sigma

    def test_backoff_factory_settings(self):
        made = backoff_factory(
            limit=2, schedule=(1,), random_sigma=0, random_groups_per_sigma=3
        )
        assert (made.limit, made.schedule) == (2, (1,))
        assert (made.random_sigma, made.random_groups_per_sigma) == (0, 3)

    def test_empty_retry_for_retries_every_error(self):
        @entrypoint_retry(retry_for=())
        def method():
            raise LookupError("not yet")

        with pytest.raises(Backoff) as raised:
            method()
        assert isinstance(raised.value.__cause__, LookupError)
