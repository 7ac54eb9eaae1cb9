"""``@consume`` with Backoff: the message comes back to its own queue."""

from __future__ import annotations

import time
import traceback

import pytest
from kombu.messaging import Queue
from nameko.testing.services import entrypoint_waiter

import aio_backoff
from nameko_bridge import Backoff
from nameko_bridge.messaging import Consumer, consume

from .conftest import backoff_from_not_yet, backs_off, raised_expired

pytestmark = pytest.mark.timeout(30)


def test_consume_backs_off_then_succeeds(
    container,
    entrypoint_tracker,
    publish_message,
    exchange,
    queue,
    wait_for_result,
    backoff_count,
):
    with entrypoint_waiter(container, "method", callback=wait_for_result) as result:
        publish_message(exchange, "msg", routing_key=queue.routing_key)

    assert result.get() == "result"
    assert entrypoint_tracker.get_results() == [None] * backoff_count + ["result"]
    assert entrypoint_tracker.exception_types() == [Backoff] * backoff_count + [None]


def test_consume_expires_at_the_limit(
    container,
    entrypoint_tracker,
    publish_message,
    exchange,
    queue,
    limited_backoff,
    wait_for_backoff_expired,
    queue_info,
):
    with entrypoint_waiter(
        container, "method", callback=wait_for_backoff_expired
    ) as result:
        publish_message(exchange, "msg", routing_key=queue.routing_key)

    with pytest.raises(Backoff.Expired) as raised:
        result.get()
    assert str(raised.value) == (
        f"Backoff aborted after '{limited_backoff}' retries (~0 seconds)"
    )
    assert raised.value.retries == limited_backoff
    assert entrypoint_tracker.get_results() == [None] * (limited_backoff + 1)
    assert entrypoint_tracker.exception_types() == [Backoff] * limited_backoff + [
        Backoff.Expired
    ]
    # acked: nothing left behind, nothing comes back
    assert queue_info(queue.name).message_count == 0


def test_copies_go_back_only_to_the_queue_that_backed_off(
    start_service,
    exchange,
    wait_for_result,
    publish_message,
    counter,
    backoff_count,
    queue_info,
):
    """Two queues bound with the same routing key: the retries of one service are
    not seen by the other."""
    queue_one = Queue("one", exchange=exchange, routing_key="message")
    queue_two = Queue("two", exchange=exchange, routing_key="message")

    class ServiceOne:
        name = "service_one"

        @consume(queue_one)
        def method(self, payload):
            return backs_off(counter["one"], backoff_count, "one")

    class ServiceTwo:
        name = "service_two"

        @consume(queue_two)
        def method(self, payload):
            counter["two"].increment()
            return "two"

    container_one = start_service(ServiceOne)
    container_two = start_service(ServiceTwo)

    with (
        entrypoint_waiter(
            container_one, "method", callback=wait_for_result
        ) as result_one,
        entrypoint_waiter(
            container_two, "method", callback=wait_for_result
        ) as result_two,
    ):
        publish_message(exchange, "msg", routing_key="message")

    assert result_one.get() == "one"
    assert result_two.get() == "two"
    assert counter["one"] == backoff_count + 1
    assert counter["two"] == 1
    assert queue_info("one").message_count == 0
    assert queue_info("two").message_count == 0


def test_other_exceptions_are_handled_as_usual(
    start_service, publish_message, queue, exchange
):
    class Boom(Exception):
        pass

    class Service:
        name = "service"

        @consume(queue)
        def handle(self, payload):
            raise Boom()

    container = start_service(Service)

    with entrypoint_waiter(container, "handle") as result:
        publish_message(exchange, "msg", routing_key=queue.routing_key)

    with pytest.raises(Boom):
        result.get()


def test_requeue_on_error_does_not_duplicate_a_backed_off_message(
    start_service, publish_message, queue, exchange, counter
):
    """The original is acked once its delayed copy is placed, also with
    ``requeue_on_error`` (nameko-amqp-retry requeued it as well: a duplicate)."""

    class Service:
        name = "service"

        @consume(queue, requeue_on_error=True)
        def handle(self, payload):
            return backs_off(counter, 1, "done")

    container = start_service(Service)

    def done(worker_ctx, result, exc_info):
        return result == "done"

    with entrypoint_waiter(container, "handle", callback=done):
        publish_message(exchange, "msg", routing_key=queue.routing_key)
    time.sleep(0.2)  # a duplicate would arrive within a delay or two
    assert counter == 2


def test_expired_message_can_be_parked(
    start_service,
    publish_message,
    queue,
    exchange,
    limited_backoff,
    get_message_from_queue,
):
    class Service:
        name = "service"

        @consume(queue, on_expired="park")
        def handle(self, payload):
            raise Backoff()

    container = start_service(Service)

    with entrypoint_waiter(container, "handle", callback=raised_expired):
        publish_message(
            exchange, {"order": 7}, routing_key=queue.routing_key, priority=3
        )

    parked = get_message_from_queue(f"{queue.name}.parked")
    assert parked.decode() == {"order": 7}
    assert parked.properties["priority"] == 3
    assert parked.headers["backoff-queue"] == queue.name
    assert "Backoff aborted after '2' retries" in parked.headers["backoff-error"]
    assert parked.headers["backoff-retries"] == limited_backoff


def test_on_expired_is_checked():
    with pytest.raises(ValueError, match="on_expired must be one of"):
        Consumer(Queue("q"), on_expired="drop")


def test_expiry_traceback_shows_every_cause(
    start_service,
    publish_message,
    queue,
    exchange,
    limited_backoff,
    wait_for_backoff_expired,
    entrypoint_tracker,
):
    class Service:
        name = "service"

        @consume(queue)
        def handle(self, payload):
            backoff_from_not_yet()

    container = start_service(Service)

    with entrypoint_waiter(container, "handle", callback=wait_for_backoff_expired):
        publish_message(exchange, "msg", routing_key=queue.routing_key)

    exc_type, exc, tb = entrypoint_tracker.get_exceptions()[-1]
    assert exc_type is Backoff.Expired
    assert issubclass(exc_type, aio_backoff.Backoff.Expired)
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    assert "NotYet: try again later" in stack
    assert "nameko_bridge.backoff.Backoff" in stack
    assert "Backoff.Expired: Backoff aborted after '2' retries" in stack
