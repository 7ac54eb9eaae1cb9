"""``@event_handler`` with Backoff: the event comes back to this handler's queue."""

from __future__ import annotations

import traceback

import pytest
from nameko.testing.services import entrypoint_waiter

from nameko_bridge import Backoff
from nameko_bridge.events import event_handler

from .conftest import NotYet, backoff_from_not_yet, backs_off

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
    start_service,
    backoff_count,
    dispatch_event,
    counter,
    entrypoint_tracker,
    wait_for_result,
):
    class Service:
        name = "service"

        @event_handler("src_service", "event_type")
        def method(self, arg):
            if counter.increment() <= backoff_count:
                backoff_from_not_yet()
            return "result"

    container = start_service(Service)

    with entrypoint_waiter(container, "method", callback=wait_for_result) as result:
        dispatch_event("src_service", "event_type", {})

    assert result.get() == "result"
    exc_type, exc, tb = entrypoint_tracker.get_exceptions()[0]
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    assert "NotYet: try again later" in stack
    assert "nameko_bridge.backoff.Backoff" in stack


def test_expired_chained_to_backoff_and_its_cause(
    start_service,
    dispatch_event,
    limited_backoff,
    entrypoint_tracker,
    wait_for_backoff_expired,
):
    class Service:
        name = "service"

        @event_handler("src_service", "event_type")
        def method(self, arg):
            backoff_from_not_yet()

    container = start_service(Service)

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
    start_service,
    entrypoint_tracker,
    backoff_count,
    counter,
    wait_for_result,
):
    class ServiceOne:
        name = "service_one"

        @event_handler("src_service", "event_type")
        def method(self, payload):
            return backs_off(counter["one"], backoff_count, "one")

    class ServiceTwo:
        name = "service_two"

        @event_handler("src_service", "event_type")
        def method(self, payload):
            return backs_off(counter["two"], backoff_count, "two")

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
        dispatch_event("src_service", "event_type", {})

    assert result_one.get() == "one"
    assert result_two.get() == "two"
    assert counter["one"] == counter["two"] == backoff_count + 1
    results = entrypoint_tracker.get_results()
    assert results.count(None) == backoff_count * 2
    assert results.count("one") == results.count("two") == 1


def test_multiple_handlers_in_one_service(
    start_service,
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
            return backs_off(counter["a"], backoff_count, "a")

        @event_handler("s1", "e2")
        def b(self, payload):
            return backs_off(counter["b"], backoff_count, "b")

        @event_handler("s2", "e1")
        def c(self, payload):
            return backs_off(counter["c"], backoff_count, "c")

    container = start_service(Service)

    for method, source, event_type in (
        ("a", "s1", "e1"),
        ("b", "s1", "e2"),
        ("c", "s2", "e1"),
    ):
        with entrypoint_waiter(container, method, callback=wait_for_result):
            dispatch_event(source, event_type, {})

    assert entrypoint_tracker.get_results() == (
        [None] * backoff_count
        + ["a"]
        + [None] * backoff_count
        + ["b"]
        + [None] * backoff_count
        + ["c"]
    )
    assert counter["a"] == counter["b"] == counter["c"] == backoff_count + 1
