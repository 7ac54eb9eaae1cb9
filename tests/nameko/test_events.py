"""``@event_handler`` with Backoff: the event comes back to this handler's queue."""

from __future__ import annotations

import traceback

import pytest
from nameko.testing.services import entrypoint_waiter

from nameko_bridge import Backoff
from nameko_bridge.events import event_handler

pytestmark = pytest.mark.timeout(30)


def test_event_handler_backs_off_then_succeeds(
    container, entrypoint_tracker, dispatch_event, wait_for_result, backoff_count
):
    with entrypoint_waiter(container, "method", callback=wait_for_result) as result:
        dispatch_event("src_service", "event_type", {})

    assert result.get() == "result"
    assert entrypoint_tracker.get_results() == [None] * backoff_count + ["result"]
    assert entrypoint_tracker.exception_types() == [Backoff] * backoff_count + [None]


def test_event_handler_expires_at_the_limit(
    container,
    entrypoint_tracker,
    dispatch_event,
    limited_backoff,
    wait_for_backoff_expired,
):
    with entrypoint_waiter(
        container, "method", callback=wait_for_backoff_expired
    ) as result:
        dispatch_event("src_service", "event_type", {})

    with pytest.raises(Backoff.Expired) as raised:
        result.get()
    assert f"Backoff aborted after '{limited_backoff}' retries" in str(raised.value)
    assert entrypoint_tracker.exception_types() == [Backoff] * limited_backoff + [
        Backoff.Expired
    ]


def test_backoff_chained_to_its_cause(
    container_factory,
    rabbit_config,
    backoff_count,
    dispatch_event,
    counter,
    entrypoint_tracker,
    wait_for_result,
):
    class NotYet(Exception):
        pass

    class Service:
        name = "service"

        @event_handler("src_service", "event_type")
        def method(self, arg):
            try:
                if counter.increment() <= backoff_count:
                    raise NotYet("try again later")
            except NotYet as exc:
                raise Backoff() from exc
            return "result"

    container = container_factory(Service, rabbit_config)
    container.start()

    with entrypoint_waiter(container, "method", callback=wait_for_result) as result:
        dispatch_event("src_service", "event_type", {})

    assert result.get() == "result"
    exc_type, exc, tb = entrypoint_tracker.get_exceptions()[0]
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    assert "NotYet: try again later" in stack
    assert "nameko_bridge.backoff.Backoff" in stack


def test_expired_chained_to_backoff_and_its_cause(
    container_factory,
    rabbit_config,
    dispatch_event,
    limited_backoff,
    entrypoint_tracker,
    wait_for_backoff_expired,
):
    class NotYet(Exception):
        pass

    class Service:
        name = "service"

        @event_handler("src_service", "event_type")
        def method(self, arg):
            try:
                raise NotYet("try again later")
            except NotYet as exc:
                raise Backoff() from exc

    container = container_factory(Service, rabbit_config)
    container.start()

    with entrypoint_waiter(
        container, "method", callback=wait_for_backoff_expired
    ) as result:
        dispatch_event("src_service", "event_type", {})

    with pytest.raises(Backoff.Expired):
        result.get()
    exc_type, exc, tb = entrypoint_tracker.get_exceptions()[-1]
    assert isinstance(exc.__cause__, Backoff)
    assert isinstance(exc.__cause__.__cause__, NotYet)
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    assert "NotYet: try again later" in stack
    assert "nameko_bridge.backoff.Backoff" in stack
    assert "Backoff.Expired: Backoff aborted after" in stack


def test_multiple_services_handle_the_same_event(
    dispatch_event,
    container_factory,
    entrypoint_tracker,
    backoff_count,
    rabbit_config,
    counter,
    wait_for_result,
):
    class ServiceOne:
        name = "service_one"

        @event_handler("src_service", "event_type")
        def method(self, payload):
            if counter["one"].increment() <= backoff_count:
                raise Backoff()
            return "one"

    class ServiceTwo:
        name = "service_two"

        @event_handler("src_service", "event_type")
        def method(self, payload):
            if counter["two"].increment() <= backoff_count:
                raise Backoff()
            return "two"

    container_one = container_factory(ServiceOne, rabbit_config)
    container_one.start()
    container_two = container_factory(ServiceTwo, rabbit_config)
    container_two.start()

    with (
        entrypoint_waiter(
            container_one, "method", callback=wait_for_result
        ) as result_one,
        entrypoint_waiter(
            container_two, "method", callback=wait_for_result
        ) as result_two,
    ):
        dispatch_event("src_service", "event_type", {})

    assert result_one.get() == "one"
    assert result_two.get() == "two"
    assert counter["one"] == counter["two"] == backoff_count + 1
    results = entrypoint_tracker.get_results()
    assert results.count(None) == backoff_count * 2
    assert results.count("one") == results.count("two") == 1


def test_multiple_handlers_in_one_service(
    container_factory,
    rabbit_config,
    wait_for_result,
    entrypoint_tracker,
    dispatch_event,
    counter,
    backoff_count,
):
    """Including events of one type from different services."""

    class Service:
        name = "service"

        @event_handler("s1", "e1")
        def a(self, payload):
            if counter["a"].increment() <= backoff_count:
                raise Backoff()
            return "a"

        @event_handler("s1", "e2")
        def b(self, payload):
            if counter["b"].increment() <= backoff_count:
                raise Backoff()
            return "b"

        @event_handler("s2", "e1")
        def c(self, payload):
            if counter["c"].increment() <= backoff_count:
                raise Backoff()
            return "c"

    container = container_factory(Service, rabbit_config)
    container.start()

    for method, source, event_type in (("a", "s1", "e1"), ("b", "s1", "e2")):
        with entrypoint_waiter(container, method, callback=wait_for_result):
            dispatch_event(source, event_type, {})
    with entrypoint_waiter(container, "c", callback=wait_for_result):
        dispatch_event("s2", "e1", {})

    assert entrypoint_tracker.get_results() == (
        [None] * backoff_count
        + ["a"]
        + [None] * backoff_count
        + ["b"]
        + [None] * backoff_count
        + ["c"]
    )
    assert counter["a"] == counter["b"] == counter["c"] == backoff_count + 1
