"""Fixtures for the nameko tests (own pytest process, eventlet monkeypatched).

nameko's pytest plugin gives every test its own vhost (``rabbit_config``), so queue
and exchange names cannot collide between tests and the vhost's deletion cleans up.
Schedules are tens of milliseconds and jitter is off unless a test turns it on.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar
from unittest.mock import patch
from urllib.parse import urlsplit

import pytest
from amqp.exceptions import NotFound
from kombu import Connection
from kombu.messaging import Exchange, Queue
from kombu.pools import connections, producers
from nameko.amqp.publish import get_connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing import rabbit
from nameko.testing.services import entrypoint_waiter

from aio_backoff.core import FailurePolicy
from nameko_bridge import Backoff, BackoffPublisher
from nameko_bridge.events import event_handler
from nameko_bridge.messaging import consume
from nameko_bridge.rpc import rpc
from tests import brokers

BACKOFFS_BEFORE_SUCCESS = 3
FAST_SCHEDULE = (20, 30, 40)

T = TypeVar("T")


class Increments(Protocol):
    def increment(self) -> int: ...


def backs_off(count: Increments, times: int, result: T) -> T:
    """An entrypoint's body: raise ``Backoff`` on the first ``times`` calls (counted
    with ``count``), then return ``result``."""
    if count.increment() <= times:
        raise Backoff()
    return result


class NotYet(Exception):
    """The error a handler backs off from, in the chaining tests."""


def backoff_from_not_yet(backoff_cls: type[Exception] = Backoff) -> NoReturn:
    """Raise ``backoff_cls()`` chained from ``NotYet("try again later")``."""
    try:
        raise NotYet("try again later")
    except NotYet as exc:
        raise backoff_cls() from exc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = str(__file__).rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.nameko)


@pytest.fixture(autouse=True)
def fast_backoff() -> Iterator[tuple[int, ...]]:
    with patch.object(Backoff, "schedule", new=FAST_SCHEDULE):
        yield FAST_SCHEDULE


@pytest.fixture(autouse=True)
def no_randomness() -> Iterator[None]:
    with patch.object(Backoff, "random_sigma", new=0):
        yield


@pytest.fixture
def limited_backoff() -> Iterator[int]:
    limit = 2
    with patch.object(Backoff, "limit", new=limit):
        yield limit


@pytest.fixture
def backoff_count() -> int:
    return BACKOFFS_BEFORE_SUCCESS


@pytest.fixture
def exchange() -> Exchange:
    return Exchange("messages")


@pytest.fixture
def queue(exchange: Exchange) -> Queue:
    return Queue("messages", exchange=exchange, routing_key="message")


def publish_to(config: dict[str, Any]) -> Callable[..., None]:
    """``publish(exchange, payload, routing_key=None, ...)`` in the vhost of
    ``config``: publish ``payload`` to ``exchange`` (declared first) through kombu's
    pools."""

    def publish(
        exchange: Exchange,
        payload: Any,
        routing_key: str | None = None,
        serializer: str = "json",
        **kwargs: Any,
    ) -> None:
        conn = Connection(config[AMQP_URI_CONFIG_KEY])
        with connections[conn].acquire(block=True) as connection:
            exchange.maybe_bind(connection)
            with producers[conn].acquire(block=True) as producer:
                producer.publish(
                    payload,
                    exchange=exchange,
                    routing_key=routing_key,
                    serializer=serializer,
                    declare=[exchange] if exchange.name else [],
                    **kwargs,
                )

    return publish


@pytest.fixture
def publish_message(rabbit_config: dict[str, Any]) -> Callable[..., None]:
    """Publish ``payload`` to ``exchange`` (declared first) through kombu's pools."""
    return publish_to(rabbit_config)


@pytest.fixture
def plugin_config() -> Iterator[dict[str, Any]]:
    """A vhost of its own on the broker with the delayed-message-exchange plugin
    (``AIO_BACKOFF_PLUGIN_AMQP_URL``, ``tests/brokers.py``), as ``rabbit_config`` is
    one on the broker under test; deleted afterwards, which cancels the consumers of
    the containers in it. Skips the test when no such broker is named."""
    broker = brokers.plugin()
    if broker is None:
        pytest.skip(brokers.PLUGIN_SKIP_REASON)
    api = rabbit.Client(broker.api_url)
    parts = urlsplit(broker.amqp_url)
    vhost = f"aio_backoff_plugin_{uuid.uuid4().hex[:12]}"
    api.create_vhost(vhost)
    try:
        api.set_vhost_permissions(vhost, parts.username, ".*", ".*", ".*")
        yield {
            AMQP_URI_CONFIG_KEY: f"pyamqp://{parts.netloc}/{vhost}",
            "username": parts.username,
            "vhost": vhost,
        }
    finally:
        api.delete_vhost(vhost)
        # kombu's pooled connections to the vhost are dead now: close them
        for key, pool in list(connections.items()):
            if isinstance(key, list) and vhost in key:
                pool.force_close_all()


@pytest.fixture
def dispatch_event(rabbit_config: dict[str, Any]) -> Callable[..., None]:
    def dispatch(service: str, event_type: str, data: Any, **kwargs: Any) -> None:
        event_dispatcher(rabbit_config, **kwargs)(service, event_type, data)

    return dispatch


@pytest.fixture
def rpc_proxy(rabbit_config: dict[str, Any]) -> Iterator[Any]:
    with ClusterRpcProxy(rabbit_config) as proxy:
        yield proxy


class Counter:
    """Counts calls, in total or per key: ``counter.increment()``,
    ``counter["a"].increment()``; compares equal to its count."""

    class Item:
        def __init__(self) -> None:
            self.value = 0

        def increment(self) -> int:
            self.value += 1
            return self.value

        def __eq__(self, other: object) -> bool:
            return self.value == other

        __hash__ = None  # type: ignore[assignment]

    _total = object()

    def __init__(self) -> None:
        self.items: defaultdict[Any, Counter.Item] = defaultdict(Counter.Item)

    def __getitem__(self, key: Any) -> Counter.Item:
        return self.items[key]

    def increment(self) -> int:
        return self[self._total].increment()

    def __eq__(self, other: object) -> bool:
        return self[self._total] == other

    __hash__ = None  # type: ignore[assignment]


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def service_cls(queue: Queue, counter: Counter, backoff_count: int) -> type:
    """One method behind all three entrypoints; backs off ``backoff_count`` times."""

    class Service:
        name = "service"

        @rpc
        @consume(queue)
        @event_handler("src_service", "event_type")
        def method(self, payload: Any) -> str:
            return backs_off(counter, backoff_count, "result")

    return Service


@pytest.fixture
def start_service(
    container_factory: Callable[..., Any], rabbit_config: dict[str, Any]
) -> Callable[[type], Any]:
    """Run a service class in a container of this test's vhost; returns it."""

    def start(service: type) -> Any:
        container = container_factory(service, rabbit_config)
        container.start()
        return container

    return start


@pytest.fixture
def container(start_service: Callable[[type], Any], service_cls: type) -> Any:
    return start_service(service_cls)


class CallTracker:
    """Every run of an entrypoint seen by an ``entrypoint_waiter`` callback."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.calls)

    def track(self, **call: Any) -> None:
        self.calls.append(call)

    def get_results(self) -> list[Any]:
        return [call["result"] for call in self.calls]

    def get_exceptions(self) -> list[Any]:
        return [call["exc_info"] for call in self.calls]

    def exception_types(self) -> list[type[BaseException] | None]:
        return [None if info is None else info[0] for info in self.get_exceptions()]


@pytest.fixture
def entrypoint_tracker() -> CallTracker:
    return CallTracker()


@pytest.fixture
def wait_for_result(entrypoint_tracker: CallTracker) -> Callable[..., bool]:
    """``entrypoint_waiter`` callback: done at a result or at ``Backoff.Expired``."""

    def callback(worker_ctx: Any, result: Any, exc_info: Any) -> bool:
        entrypoint_tracker.track(result=result, exc_info=exc_info)
        return exc_info is None or exc_info[0] is Backoff.Expired

    return callback


def raised_expired(worker_ctx: Any, result: Any, exc_info: Any) -> bool:
    """``entrypoint_waiter`` callback: done when the entrypoint raises Expired."""
    return bool(exc_info and exc_info[0] is Backoff.Expired)


@pytest.fixture
def wait_for_backoff_expired(entrypoint_tracker: CallTracker) -> Callable[..., bool]:
    """``raised_expired``, tracking each call in ``entrypoint_tracker``."""

    def callback(worker_ctx: Any, result: Any, exc_info: Any) -> bool:
        entrypoint_tracker.track(result=result, exc_info=exc_info)
        return raised_expired(worker_ctx, result, exc_info)

    return callback


@pytest.fixture
def queue_info(amqp_uri: str) -> Callable[[str], Any]:
    """``queue_declare(passive=True)`` of a queue: name, message and consumer count."""

    def get_queue_info(queue_name: str) -> Any:
        with get_connection(amqp_uri) as conn:
            return Queue(name=queue_name).bind(conn).queue_declare(passive=True)

    return get_queue_info


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Call ``check`` until it stops raising AssertionError (the management API's
    statistics lag by a few seconds)."""
    deadline = time.monotonic() + timeout
    for attempt in itertools.count():
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(min(0.05 * 2**attempt, 0.5))
    return None  # pragma: no cover


@pytest.fixture
def fetch_message(amqp_uri: str) -> Callable[..., Any]:
    """``fetch(queue_name, timeout=5)``: the first message ``basic.get`` finds in an
    existing queue (taken off it), waiting for one to arrive; no declare, so a queue
    with any arguments will do. Fails when none arrives in time."""

    def fetch(queue_name: str, timeout: float = 5.0) -> Any:
        def got() -> Any:
            with Connection(amqp_uri) as conn:
                channel = conn.channel()
                try:
                    raw = channel.basic_get(queue_name, no_ack=True)
                except NotFound:
                    raw = None
                assert raw is not None, f"no message in {queue_name!r}"
                return channel.message_to_python(raw)

        return eventually(got, timeout=timeout)

    return fetch


@pytest.fixture
def bridge_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog for the ``nameko_bridge`` loggers, from INFO up."""
    with caplog.at_level(logging.INFO, logger="nameko_bridge"):
        yield caplog


def bridge_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    """Messages of the ``nameko_bridge`` records at exactly ``level``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("nameko_bridge") and record.levelno == level
    ]


@pytest.fixture
def quick_failures() -> Iterator[FailurePolicy]:
    """Transient failures waited out in tenths of a second, parked at the third."""
    policy = FailurePolicy(max_transient_tries=3, first_pause_s=0.1, max_pause_s=0.2)
    with patch.object(BackoffPublisher, "failure_policy", policy):
        yield policy


def raised(kind: type[BaseException]) -> Callable[..., bool]:
    """``entrypoint_waiter`` callback: done when the entrypoint's result is ``kind``."""

    def callback(worker_ctx: Any, result: Any, exc_info: Any) -> bool:
        return exc_info is not None and issubclass(exc_info[0], kind)

    return callback


@pytest.fixture
def publish_until_raised(
    publish_message: Callable[..., None], exchange: Exchange, queue: Queue
) -> Callable[..., Any]:
    """``run(container, kind, payload="msg", routing_key=queue's)``: publish
    ``payload`` to ``exchange`` and wait until the container's ``method`` reports
    ``kind``; returns that exception."""

    def run(
        container: Any,
        kind: type[BaseException],
        payload: Any = "msg",
        routing_key: str | None = None,
    ) -> Any:
        with entrypoint_waiter(container, "method", callback=raised(kind)) as result:
            publish_message(
                exchange, payload, routing_key=routing_key or queue.routing_key
            )
        with pytest.raises(kind) as error:
            result.get()
        return error.value

    return run


@pytest.fixture
def expire_a_message(
    start_service: Callable[[type], Any],
    publish_until_raised: Callable[..., Any],
) -> Callable[..., Any]:
    """``expire(queue, payload="msg", **consume_options)``: run a service whose
    ``@consume(queue, ...)`` always backs off, publish ``payload`` with the queue's
    routing key, and wait until the entrypoint reports ``Backoff.Expired``. Returns
    the container."""

    def expire(queue: Queue, payload: Any = "msg", **options: Any) -> Any:
        class Service:
            name = "service"

            @consume(queue, **options)
            def method(self: Any, payload: Any) -> None:
                raise Backoff()

        container = start_service(Service)
        publish_until_raised(
            container, Backoff.Expired, payload, routing_key=queue.routing_key
        )
        return container

    return expire
