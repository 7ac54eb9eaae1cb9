"""The delay topology and the retry protocol, seen from nameko services."""

from __future__ import annotations

import json
import logging
from typing import Any
from unittest.mock import ANY, patch

import pytest
from amqp import Message as AmqpMessage  # type: ignore[import-untyped]
from amqp.exceptions import NotFound, PreconditionFailed
from kombu.entity import Queue as KombuQueue
from kombu.messaging import Exchange, Queue
from kombu.serialization import register, unregister
from nameko.amqp.publish import get_connection
from nameko.extensions import DependencyProvider
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_extension

import aio_backoff
import nameko_bridge.backoff
from aio_backoff import DelayQueue, LeaseBook, plan_retry, retries_done
from nameko_bridge import Backoff, BackoffPublisher, CopyNotPlaced
from nameko_bridge.backoff import get_backoff_queue_name
from nameko_bridge.constants import CALL_ID_STACK_HEADER_KEY
from nameko_bridge.messaging import Consumer, consume
from nameko_bridge.rpc import rpc

from .conftest import bridge_records, eventually, raised_expired

pytestmark = pytest.mark.timeout(30)


def dynamic_backoff(delay: int, limit: int | None = None) -> type[Backoff]:
    """A Backoff whose only delay is ``delay`` ms."""

    class DynamicBackoff(Backoff):
        schedule = (delay,)

    if limit is not None:
        DynamicBackoff.limit = limit
    return DynamicBackoff


def assert_gone(rabbit_config: dict[str, Any], name: str) -> None:
    """Fail while the queue ``name`` exists."""
    with get_connection(rabbit_config["AMQP_URI"]) as conn:
        try:
            Queue(name).bind(conn).queue_declare(passive=True)
        except NotFound:
            return
    raise AssertionError(f"{name} still exists")


@pytest.fixture
def delaying_container(start_service, queue):
    """A consumer that backs off each message by the delay in its payload."""

    class Service:
        name = "service"

        @consume(queue)
        def backoff(self, delay):
            raise dynamic_backoff(delay, limit=1)()

    return start_service(Service)


@pytest.fixture
def declared_queues(monkeypatch) -> list[str]:
    """Names of the queues kombu declares, in order (delay queues included)."""
    names: list[str] = []
    original = KombuQueue.declare

    def declare(self, *args, **kwargs):
        names.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KombuQueue, "declare", declare)
    return names


class TestTopology:
    def test_a_queue_per_delay_holds_its_copies(
        self, delaying_container, publish_message, exchange, queue, counter, queue_info
    ):
        delays = [5000, 6000, 6000, 7000, 7000, 7000]

        def all_received(worker_ctx, result, exc_info):
            return counter.increment() == len(delays)

        with entrypoint_waiter(delaying_container, "backoff", callback=all_received):
            for delay in delays:
                publish_message(exchange, delay, routing_key=queue.routing_key)

        for delay in set(delays):
            info = queue_info(get_backoff_queue_name(delay))
            assert info.message_count == delays.count(delay)

    @pytest.mark.parametrize(
        ("sent", "kept"),
        [
            ({}, {"delivery_mode": 2, "priority": 0}),
            (
                {"delivery_mode": 1, "priority": 3, "message_id": "m-1"},
                {"delivery_mode": 1, "priority": 3, "message_id": "m-1"},
            ),
        ],
    )
    def test_the_delayed_copy_on_the_wire(
        self,
        delaying_container,
        queue,
        rabbit_config,
        sent,
        kept,
    ):
        """Persistent and priority 0 unless the original said otherwise; the
        delay as its expiration; the protocol headers."""
        with (
            get_connection(rabbit_config["AMQP_URI"]) as conn,
            entrypoint_waiter(delaying_container, "backoff"),
        ):
            # py-amqp's own message: no property the test does not name
            original = AmqpMessage(b"5000", content_type="application/json", **sent)
            conn.default_channel.basic_publish(original, routing_key=queue.name)

        with get_connection(rabbit_config["AMQP_URI"]) as conn:
            channel = conn.default_channel
            # basic.get, not a consumer: that would declare the queue without its
            # arguments and fail
            raw = channel.basic_get(get_backoff_queue_name(5000), no_ack=True)
            copy = channel.message_to_python(raw)
        assert copy.decode() == 5000
        assert copy.properties["expiration"] == "5000"
        assert copy.content_type == "application/json"
        for name, value in kept.items():
            assert copy.properties[name] == value, name
        assert copy.headers["backoff"] == 5000
        assert copy.headers["backoff-retries"] == 1

    def test_negative_delays_are_made_positive(
        self, container, publish_message, exchange, queue, wait_for_result, queue_info
    ):
        with (
            patch.object(Backoff, "schedule", new=(-30,)),
            entrypoint_waiter(container, "method", callback=wait_for_result) as result,
        ):
            publish_message(exchange, "msg", routing_key=queue.routing_key)
        assert result.get() == "result"
        assert queue_info("backoff--30ms").message_count == 0

    def test_delay_queues_expire_after_use(
        self,
        delaying_container,
        publish_message,
        exchange,
        queue,
        counter,
        rabbit_config,
        rabbit_manager,
    ):
        delays = [50, 100, 100, 100, 50]

        def all_expired(worker_ctx, result, exc_info):
            if exc_info[0] is not Backoff.Expired:
                return False
            return counter.increment() == len(delays)

        # a delay queue expires with the copies still in it once it has been unused
        # for delay + grace: 100 ms lost copies (and hung the test) on a loaded machine
        with (
            patch.object(nameko_bridge.backoff, "EXPIRY_GRACE_PERIOD", 1000),
            entrypoint_waiter(delaying_container, "backoff", callback=all_expired),
        ):
            for delay in delays:
                publish_message(exchange, delay, routing_key=queue.routing_key)

        # asked through the management API: a passive declare would count as a use
        # of the queue and keep it alive while the checks come faster than x-expires
        def gone(name: str) -> None:
            queues = rabbit_manager.get_queues(rabbit_config["vhost"])
            assert name not in {queue["name"] for queue in queues}, f"{name} is there"

        for delay in set(delays):
            eventually(lambda delay=delay: gone(get_backoff_queue_name(delay)))

    def test_republishing_renews_the_delay_queue(
        self,
        delaying_container,
        publish_message,
        exchange,
        queue,
        counter,
        caplog,
        rabbit_config,
    ):
        """Each copy is published after the delay queue of the one before has
        expired (waited for): the lease is stale by then, so the publisher declares
        the queue again first, and no copy comes back unroutable. Without that
        renewal each copy would find the queue gone and be rescued only by the
        redeclare-on-return fallback, which logs it."""
        delays = [50, 50, 50]

        with (
            caplog.at_level(logging.WARNING, logger="nameko_bridge"),
            patch.object(nameko_bridge.backoff, "EXPIRY_GRACE_PERIOD", 100),
        ):
            for delay in delays:
                with entrypoint_waiter(
                    delaying_container, "backoff", callback=raised_expired, timeout=10
                ):
                    publish_message(exchange, delay, routing_key=queue.routing_key)
                counter.increment()
                eventually(
                    lambda: assert_gone(rabbit_config, get_backoff_queue_name(50))
                )

        assert counter == len(delays)
        assert "unroutable" not in caplog.text

    def test_a_fresh_lease_skips_the_declare(
        self,
        container,
        publish_message,
        exchange,
        queue,
        wait_for_result,
        declared_queues,
        backoff_count,
    ):
        """The point of the LeaseBook: three retries through one delay queue, one
        declare (nameko-amqp-retry declared before every copy)."""
        with (
            patch.object(Backoff, "schedule", new=(20,)),
            entrypoint_waiter(container, "method", callback=wait_for_result),
        ):
            publish_message(exchange, "msg", routing_key=queue.routing_key)
        assert declared_queues.count("backoff--20ms") == 1
        assert backoff_count == 3

    def test_a_copy_confirmed_after_the_grace_period_is_placed_once_more(
        self, start_service, publish_message, exchange, queue, declared_queues, caplog
    ):
        """The lease was fresh when the publish began, but its confirm came more
        than the grace period later: the queue may have expired with the copy in
        it, so the copy is declared and published again (a duplicate, no loss)."""
        handled: list[str] = []

        class Service:
            name = "service"

            @consume(queue)
            def method(self, payload):
                handled.append(payload)
                if len(handled) == 1:
                    raise dynamic_backoff(20)()

        container = start_service(Service)
        publisher = get_extension(container, BackoffPublisher)
        now = [1000.0]
        publisher.lease_book = LeaseBook(clock=lambda: now[0])
        publish = publisher._publish_confirmed
        stalls = [6.0]  # longer than the 5 s grace

        def stalled(*args, **kwargs):
            publish(*args, **kwargs)
            if stalls:
                now[0] += stalls.pop()

        def twice_more(worker_ctx, result, exc_info):
            return len(handled) == 3

        with (
            patch.object(publisher, "_publish_confirmed", stalled),
            caplog.at_level(logging.WARNING, logger="nameko_bridge"),
            entrypoint_waiter(container, "method", callback=twice_more),
        ):
            publish_message(exchange, "once", routing_key=queue.routing_key)

        assert handled == ["once"] * 3  # the original, then the copy twice
        assert declared_queues.count("backoff--20ms") == 2  # declared again
        assert "confirmed too late" in caplog.text

    def test_concurrent_first_retries_do_not_race_the_declare(
        self,
        start_service,
        publish_message,
        exchange,
        queue,
        counter,
        caplog,
    ):
        """Ten workers back off at once into a delay queue that does not exist yet:
        none of them publishes before the queue is declared (no copy comes back
        unroutable), and every message returns."""
        seen: set[int] = set()

        class Service:
            name = "service"

            @consume(queue)
            def method(self, number):
                if number not in seen:
                    seen.add(number)
                    raise dynamic_backoff(20)()
                counter.increment()

        container = start_service(Service)

        def all_done(worker_ctx, result, exc_info):
            return exc_info is None and counter == 10

        with (
            caplog.at_level(logging.WARNING, logger="nameko_bridge"),
            entrypoint_waiter(container, "method", callback=all_done),
        ):
            for number in range(10):
                publish_message(exchange, number, routing_key=queue.routing_key)

        # No copy returned by the broker. RabbitMQ 4.3 can refuse one of ten
        # concurrent declares of a new queue with 404 "home node ... is down or
        # inaccessible" while another creates it; the library declares again and
        # publishes once more (logged with the declare's error), which is not a
        # copy published before its queue existed.
        returned = [
            record.getMessage()
            for record in caplog.records
            if "unroutable" in record.getMessage()
            and "is down or inaccessible" not in record.getMessage()
        ]
        assert returned == []

    @pytest.mark.parametrize(
        "delete",
        [
            pytest.param(
                lambda conn: Queue("backoff--20ms").bind(conn).delete(), id="queue"
            ),
            pytest.param(
                lambda conn: Exchange("backoff").bind(conn).delete(), id="exchange"
            ),
        ],
    )
    def test_a_deleted_delay_queue_or_exchange_is_declared_again(
        self,
        start_service,
        rabbit_config,
        publish_message,
        exchange,
        queue,
        counter,
        caplog,
        declared_queues,
        delete,
    ):
        """The copy comes back unroutable, or the exchange is not found (either went
        away behind a fresh lease): declared again and published once more, nothing
        lost."""

        class Service:
            name = "service"

            @consume(queue)
            def method(self, payload):
                calls = counter.increment()
                if calls == 2:
                    with get_connection(rabbit_config["AMQP_URI"]) as conn:
                        delete(conn)
                if calls <= 2:
                    raise dynamic_backoff(20)()
                return "done"

        container = start_service(Service)

        def done(worker_ctx, result, exc_info):
            return result == "done"

        with (
            caplog.at_level(logging.WARNING, logger="nameko_bridge"),
            entrypoint_waiter(container, "method", callback=done),
        ):
            publish_message(exchange, "msg", routing_key=queue.routing_key)

        assert counter == 3
        assert declared_queues.count("backoff--20ms") == 2
        assert "came back unroutable" in caplog.text

    def test_an_unroutable_copy_parks_the_message(
        self,
        publish_message,
        exchange,
        start_service,
        queue,
        declared_queues,
        fetch_message,
        bridge_log,
        publish_until_raised,
    ):
        """Unroutable also after a fresh declare: permanent. The message is parked
        with the reason, once, and the container goes on (it used to die)."""

        def unroutable_queue(self, expiration):
            return Queue(
                "nowhere",
                exchange=self.exchange,
                binding_arguments={"backoff": -1, "x-match": "any"},
            )

        class Service:
            name = "service"

            @consume(queue)
            def method(self, payload):
                if payload == "next":
                    return "done"
                raise Backoff()

        with patch.object(BackoffPublisher, "make_queue", unroutable_queue):
            container = start_service(Service)
            error = publish_until_raised(container, CopyNotPlaced, "keep me")
            assert "came back unroutable" in str(error)

            assert declared_queues.count("nowhere") == 2  # first publish, then again
            parked = fetch_message(f"{queue.name}.parked")
            assert parked.decode() == "keep me"
            assert "came back unroutable" in parked.headers["backoff-error"]
            assert parked.headers.get("backoff-retries") is None
            [logged] = bridge_records(bridge_log, logging.ERROR)
            assert "parked the message of queue 'messages'" in logged

            with entrypoint_waiter(container, "method") as result:
                publish_message(exchange, "next", routing_key=queue.routing_key)
            assert result.get() == "done"


class TestMultipleMessages:
    def test_shorter_delays_overtake_longer_ones(
        self, start_service, counter, entrypoint_tracker, rpc_proxy
    ):
        quick_backoff = dynamic_backoff(30)
        slow_backoff = dynamic_backoff(400)

        class Service:
            name = "service"

            backoff = BackoffPublisher()  # as services of nameko-amqp-retry declared

            @rpc
            def slow(self):
                if counter["slow"].increment() <= 1:
                    raise slow_backoff()
                return "slow"

            @rpc
            def quick(self):
                if counter["quick"].increment() <= 1:
                    raise quick_backoff()
                return "quick"

        container = start_service(Service)

        def track(worker_ctx, result, exc_info):
            entrypoint_tracker.track(result=result, exc_info=exc_info)
            return exc_info is None

        with (
            entrypoint_waiter(container, "quick", callback=track) as quick,
            entrypoint_waiter(container, "slow", callback=track) as slow,
        ):
            # "slow" backs off first, for sure
            with entrypoint_waiter(container, "slow"):
                rpc_proxy.service.slow.call_async()
            rpc_proxy.service.quick.call_async()

        assert quick.get() == "quick"
        assert slow.get() == "slow"
        assert entrypoint_tracker.get_results() == [None, None, "quick", "slow"]
        assert entrypoint_tracker.get_exceptions() == [
            (slow_backoff, ANY, ANY),
            (quick_backoff, ANY, ANY),
            None,
            None,
        ]


class CallStack(DependencyProvider):
    """Gives the service the worker's call-id stack."""

    def get_dependency(self, worker_ctx):
        return worker_ctx.call_id_stack


@pytest.fixture
def stack_container(start_service, service_cls):
    class Service(service_cls):
        call_stack = CallStack()

    return start_service(Service)


@pytest.fixture
def record_stacks() -> tuple[list[list[str]], Any]:
    stacks: list[list[str]] = []

    def callback(worker_ctx, result, exc_info):
        stacks.append(worker_ctx.call_id_stack)
        return exc_info is None

    return stacks, callback


@pytest.mark.usefixtures("predictable_call_ids")
class TestCallStack:
    def test_rpc_backoff_extends_the_call_stack(
        self, stack_container, rpc_proxy, record_stacks
    ):
        stacks, callback = record_stacks
        with entrypoint_waiter(stack_container, "method", callback=callback):
            rpc_proxy.service.method("msg")

        caller = "standalone_rpc_proxy.call.0"
        assert stacks == [
            [caller, "service.method.1"],
            [caller, "service.method.1.backoff", "service.method.2"],
            [
                caller,
                "service.method.1.backoff",
                "service.method.2.backoff",
                "service.method.3",
            ],
            [
                caller,
                "service.method.1.backoff",
                "service.method.2.backoff",
                "service.method.3.backoff",
                "service.method.4",
            ],
        ]

    def test_event_backoff_extends_the_call_stack(
        self, stack_container, dispatch_event, record_stacks
    ):
        stacks, callback = record_stacks
        with entrypoint_waiter(stack_container, "method", callback=callback):
            dispatch_event(
                "src_service",
                "event_type",
                {},
                headers={CALL_ID_STACK_HEADER_KEY: ["event.dispatch"]},
            )

        assert stacks == [
            ["event.dispatch", "service.method.0"],
            ["event.dispatch", "service.method.0.backoff", "service.method.1"],
            [
                "event.dispatch",
                "service.method.0.backoff",
                "service.method.1.backoff",
                "service.method.2",
            ],
            [
                "event.dispatch",
                "service.method.0.backoff",
                "service.method.1.backoff",
                "service.method.2.backoff",
                "service.method.3",
            ],
        ]

    def test_consume_backoff_extends_the_call_stack(
        self, stack_container, publish_message, exchange, queue, record_stacks
    ):
        stacks, callback = record_stacks
        with entrypoint_waiter(stack_container, "method", callback=callback):
            publish_message(
                exchange,
                "msg",
                routing_key=queue.routing_key,
                headers={CALL_ID_STACK_HEADER_KEY: ["message.publish"]},
            )

        assert stacks[-1] == [
            "message.publish",
            "service.method.0.backoff",
            "service.method.1.backoff",
            "service.method.2.backoff",
            "service.method.3",
        ]

    def test_a_message_without_headers_keeps_its_call_stack(
        self, stack_container, publish_message, exchange, queue, record_stacks
    ):
        """nameko-amqp-retry lost the stack when the message had no headers."""
        stacks, callback = record_stacks
        with entrypoint_waiter(stack_container, "method", callback=callback):
            publish_message(exchange, "msg", routing_key=queue.routing_key)

        assert stacks == [
            ["service.method.0"],
            ["service.method.0.backoff", "service.method.1"],
            [
                "service.method.0.backoff",
                "service.method.1.backoff",
                "service.method.2",
            ],
            [
                "service.method.0.backoff",
                "service.method.1.backoff",
                "service.method.2.backoff",
                "service.method.3",
            ],
        ]


class TestSerialization:
    @pytest.fixture(autouse=True)
    def custom_serializer(self, rabbit_config):
        def encode(value):
            return json.dumps(value).upper()

        def decode(value):
            return json.loads(value.lower())

        register("upperjson", encode, decode, "application/x-upper-json", "utf-8")
        rabbit_config["serializer"] = "upperjson"
        yield
        unregister("upperjson")

    def test_custom_serializer(
        self,
        container,
        publish_message,
        exchange,
        queue,
        wait_for_result,
        backoff_count,
        entrypoint_tracker,
    ):
        payloads: list[Any] = []

        def record(worker_ctx, result, exc_info):
            payloads.append(worker_ctx.args)
            return wait_for_result(worker_ctx, result, exc_info)

        with entrypoint_waiter(container, "method", callback=record) as result:
            publish_message(
                exchange, "msg", serializer="upperjson", routing_key=queue.routing_key
            )

        assert result.get() == "result"
        assert payloads == [("msg",)] * (backoff_count + 1)


class TestRetryCount:
    def test_previously_dead_lettered_message_starts_at_zero(
        self,
        container,
        publish_message,
        rabbit_config,
        exchange,
        queue,
        wait_for_result,
        entrypoint_tracker,
        backoff_count,
    ):
        """``x-death`` entries from other exchanges do not count."""
        deadletter = Exchange(name="deadletter", type="topic")
        with get_connection(rabbit_config["AMQP_URI"]) as conn:
            Queue(
                "deadletter",
                exchange=deadletter,
                routing_key="#",
                queue_arguments={"x-dead-letter-exchange": exchange.name},
            ).bind(conn).declare()

        with (
            patch.object(Backoff, "limit", new=backoff_count),
            entrypoint_waiter(container, "method", callback=wait_for_result) as result,
        ):
            publish_message(
                deadletter, "msg", routing_key=queue.routing_key, expiration=0.01
            )

        assert result.get() == "result"
        assert entrypoint_tracker.exception_types() == [Backoff] * backoff_count + [
            None
        ]

    def test_the_count_reaches_the_limit_without_x_death(
        self, start_service, publish_message, exchange, queue
    ):
        """As on RabbitMQ 4.x, where a republished ``x-death`` is reset: with the
        broker's header stripped, our own ``backoff-retries`` still counts up to the
        limit (nameko-amqp-retry counted from ``x-death`` and retried forever)."""
        seen: list[Any] = []
        counted: list[int] = []

        class ForgetfulConsumer(Consumer):
            def handle_message(self, body, message):
                message.headers.pop("x-death", None)
                seen.append(message.headers.get("backoff-retries"))
                # what the asyncio side would count for this message
                counted.append(retries_done(message.headers))
                super().handle_message(body, message)

        class Service:
            name = "service"

            @ForgetfulConsumer.decorator(queue)
            def method(self, payload):
                raise Backoff()

        container = start_service(Service)

        with (
            patch.object(Backoff, "limit", new=3),
            entrypoint_waiter(container, "method", callback=raised_expired) as result,
        ):
            publish_message(exchange, "msg", routing_key=queue.routing_key)

        with pytest.raises(Backoff.Expired, match="after '3' retries"):
            result.get()
        assert seen == [None, 1, 2, 3]
        assert counted == [0, 1, 2, 3]

    def test_a_legacy_count_is_carried_on(
        self,
        container,
        publish_message,
        exchange,
        queue,
        wait_for_backoff_expired,
        entrypoint_tracker,
    ):
        """A message that nameko-amqp-retry retried twice (its count only in
        ``x-death``) has one retry left of a limit of 3."""
        legacy = [{"exchange": "backoff", "queue": "backoff--20ms", "count": 2}]
        with (
            patch.object(Backoff, "limit", new=3),
            entrypoint_waiter(container, "method", callback=wait_for_backoff_expired),
        ):
            publish_message(
                exchange,
                "msg",
                routing_key=queue.routing_key,
                headers={"x-death": legacy},
            )
        assert entrypoint_tracker.exception_types() == [Backoff, Backoff.Expired]

    def test_a_copy_made_by_the_asyncio_side_continues_its_count(
        self,
        container,
        publish_message,
        exchange,
        queue,
        wait_for_backoff_expired,
        entrypoint_tracker,
    ):
        """The headers the asyncio stack writes on its second copy (the same core,
        ``plan_retry``): a nameko service reads the count and has one retry left."""
        first = plan_retry(aio_backoff.Backoff(), {}, target_queue=queue.name)
        second = plan_retry(
            aio_backoff.Backoff(), first.headers, target_queue=queue.name
        )
        assert second.headers["backoff-retries"] == 2
        with (
            patch.object(Backoff, "limit", new=3),
            entrypoint_waiter(container, "method", callback=wait_for_backoff_expired),
        ):
            publish_message(
                exchange, "msg", routing_key=queue.routing_key, headers=second.headers
            )
        assert entrypoint_tracker.exception_types() == [Backoff, Backoff.Expired]


class TestRefusedByTheBroker:
    """A declare the broker refuses (a queue exists with other arguments) is
    permanent: the message is kept at once, with the reason, in one ERROR line, and
    the container goes on (it used to die, and the message came back to loop)."""

    def test_delay_queue_with_other_arguments(
        self,
        publish_message,
        exchange,
        start_service,
        rabbit_config,
        queue,
        counter,
        fetch_message,
        bridge_log,
        publish_until_raised,
    ):
        with get_connection(rabbit_config["AMQP_URI"]) as conn:
            # durable as ours, with another x-expires (RabbitMQ 4.3 refuses a
            # transient one, which older tests used for "other arguments")
            Queue(
                "backoff--20ms", durable=True, queue_arguments={"x-expires": 60000}
            ).bind(conn).declare()

        class Service:
            name = "service"

            @consume(queue)
            def method(self, payload):
                counter[payload].increment()
                if payload == "next":
                    return "done"
                raise dynamic_backoff(20)()

        container = start_service(Service)
        refused = publish_until_raised(container, CopyNotPlaced, "keep me")
        assert "PRECONDITION_FAILED" in str(refused)
        assert isinstance(refused.__cause__, PreconditionFailed)

        parked = fetch_message(f"{queue.name}.parked")
        assert parked.decode() == "keep me"
        assert "PRECONDITION_FAILED" in parked.headers["backoff-error"]
        assert parked.headers["backoff-queue"] == queue.name
        [logged] = bridge_records(bridge_log, logging.ERROR)
        assert "the broker refused the delayed copy" in logged
        # the failed declare is not taken for a lease: the next copy declares
        publisher = get_extension(container, BackoffPublisher)
        assert publisher.lease_book.needs_declare(DelayQueue(delay_ms=20))

        with entrypoint_waiter(container, "method") as result:
            publish_message(exchange, "next", routing_key=queue.routing_key)
        assert result.get() == "done"
        assert counter["keep me"] == 1  # the handler did not run again

    def test_parking_queue_with_other_arguments(
        self, expire_a_message, rabbit_config, queue, limited_backoff, fetch_message
    ):
        """The expired message goes into the parking queue as it exists."""
        with get_connection(rabbit_config["AMQP_URI"]) as conn:
            Queue(
                f"{queue.name}.parked",
                durable=True,
                queue_arguments={"x-max-length": 1000},
            ).bind(conn).declare()

        expire_a_message(queue, payload="keep me", on_expired="park")

        kept = fetch_message(f"{queue.name}.parked")
        assert kept.decode() == "keep me"
        assert kept.headers["backoff-retries"] == limited_backoff
