"""``nameko_bridge.backoff`` and ``decorators``, no broker: the drop-in surface."""

from __future__ import annotations

import inspect
import warnings
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock, call, patch

import pytest
from kombu.connection import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY, DEFAULT_TRANSPORT_OPTIONS

import aio_backoff
import nameko_bridge
import nameko_bridge.backoff
from nameko_bridge import Backoff, BackoffPublisher, expect_backoff_exception
from nameko_bridge._compat import message_settler
from nameko_bridge._entrypoints import retry_headers
from nameko_bridge.backoff import (
    EXPIRY_GRACE_PERIOD,
    _copy_properties,
    _expiration_seconds,
    get_backoff_queue_name,
    round_to_nearest,
)
from nameko_bridge.decorators import entrypoint_retry


def message_with(**headers: Any) -> Mock:
    message = Mock()
    message.headers = headers
    return message


def deaths(*counts: int, exchange: str = "backoff") -> list[dict[str, Any]]:
    return [
        {"exchange": exchange, "queue": f"backoff--{i}", "count": count}
        for i, count in enumerate(counts)
    ]


class TestNext:
    @pytest.fixture
    def backoff(self) -> Backoff:
        class CustomBackoff(Backoff):
            schedule = (1000, 2000, 3000)
            random_sigma = 0
            limit = 10

        return CustomBackoff()

    def test_first(self, backoff):
        assert backoff.next(message_with(), "backoff") == 1000
        assert str(backoff) == "Backoff(retry #1 in 1000ms)"

    def test_counted_from_x_death(self, backoff):
        assert backoff.next(message_with(**{"x-death": deaths(1)}), "backoff") == 2000

    def test_summed_over_delay_queues(self, backoff):
        message = message_with(**{"x-death": deaths(2, 1)})
        assert backoff.next(message, "backoff") == 3000
        assert str(backoff) == "Backoff(retry #4 in 3000ms)"

    def test_last_item_repeats(self, backoff):
        assert backoff.next(message_with(**{"x-death": deaths(5)}), "backoff") == 3000

    def test_counted_from_our_header(self, backoff):
        assert backoff.next(message_with(**{"backoff-retries": 1}), "backoff") == 2000

    def test_the_larger_count_wins(self, backoff):
        headers = {"backoff-retries": 1, "x-death": deaths(2)}
        assert backoff.next(message_with(**headers), "backoff") == 3000

    def test_other_exchanges_do_not_count(self, backoff):
        headers = {"x-death": deaths(1, 1) + deaths(99, exchange="not-backoff")}
        assert backoff.next(message_with(**headers), "backoff") == 3000

    @pytest.mark.parametrize("counts", [(99,), (5, 5)])
    def test_expired_at_and_past_the_limit(self, backoff, counts):
        with pytest.raises(Backoff.Expired) as raised:
            backoff.next(message_with(**{"x-death": deaths(*counts)}), "backoff")
        # 27 = 1 + 2 + 3 * 8 seconds
        assert str(raised.value) == "Backoff aborted after '10' retries (~27 seconds)"
        assert raised.value.__cause__ is backoff

    def test_no_limit(self, backoff):
        with patch.object(type(backoff), "limit", 0):
            headers = {"x-death": deaths(999)}
            assert backoff.next(message_with(**headers), "backoff") == 3000

    def test_uncalculated_str(self):
        assert str(Backoff()) == "Backoff(uninitialised)"

    @patch("nameko_bridge.backoff.random")
    def test_jitter_is_drawn_from_this_modules_random(self, random_patch):
        class Jittery(Backoff):
            schedule = (1000, 2000, 3000)
            random_sigma = 100
            limit = 10

        random_patch.gauss.return_value = 2205.5
        backoff = Jittery()
        assert backoff.next(message_with(**{"x-death": deaths(1)}), "backoff") == 2200
        assert random_patch.gauss.call_args_list == [call(2000, 100)]

    def test_class_attributes_are_read_at_each_retry(self, backoff):
        with patch.object(Backoff, "schedule", (7,)):
            assert Backoff().next(message_with(), "backoff") == 7

    def test_one_expired_hierarchy(self):
        assert issubclass(nameko_bridge.Backoff.Expired, aio_backoff.Backoff.Expired)
        assert issubclass(Backoff, aio_backoff.Backoff)


@pytest.mark.parametrize(
    ("value", "interval", "result"),
    [
        (2000, 1, 2000),
        (2000, 10, 2000),
        (2001, 10, 2000),
        (2009, 10, 2010),
        (0, 10, 0),
        (10, 10, 10),
        (10, -10, 10),
        (-10, 10, -10),
        (-10, -10, -10),
        (2205.5, 20, 2200),
    ],
)
def test_round_to_nearest(value, interval, result):
    assert round_to_nearest(value, interval) == result


def test_queue_names():
    assert get_backoff_queue_name(1500) == "backoff--1500ms"


def test_make_queue_reads_the_grace_period_at_declare_time():
    publisher = BackoffPublisher()
    assert EXPIRY_GRACE_PERIOD == 5000
    assert publisher.make_queue(50).queue_arguments["x-expires"] == 5050
    with patch.object(nameko_bridge.backoff, "EXPIRY_GRACE_PERIOD", 123):
        queue = publisher.make_queue(50)
    assert queue.name == "backoff--50ms"
    assert queue.queue_arguments == {"x-expires": 173, "x-dead-letter-exchange": ""}
    assert queue.binding_arguments == {"backoff": 50, "x-match": "any"}
    assert queue.exchange.name == "backoff"
    assert queue.exchange.type == "headers"
    assert queue.durable


def test_the_delay_exchange_is_named_delay_exchange():
    """``delay_exchange`` names it; ``exchange`` is it as kombu's Exchange
    (nameko-amqp-retry's attribute, no warning); the plan goes through it."""

    class Elsewhere(BackoffPublisher):
        delay_exchange = "retries"

    publisher = Elsewhere()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert publisher.exchange.name == "retries"
        assert publisher.make_queue(50).exchange.name == "retries"
        legacy = {"x-death": deaths(2, exchange="retries")}
        plan = publisher.plan(Backoff(), legacy, "q")
    assert plan.delay_queue.delay_exchange == "retries"
    assert plan.retry_number == 3  # the x-death of "retries" counted


def test_exchange_name_warns_and_still_works():
    publisher = BackoffPublisher()
    with pytest.warns(DeprecationWarning, match=r"BackoffPublisher\.delay_exchange"):
        assert publisher.exchange_name == "backoff"


def test_nameko_looking_for_sub_extensions_sees_no_deprecated_name():
    """nameko binds an extension with ``inspect.getmembers``, which reads every
    attribute: that must not warn in every container."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(inspect.getmembers(BackoffPublisher()))
    assert members["delay_exchange"] == "backoff"


def test_a_subclass_setting_exchange_name_warns_and_still_works():
    with pytest.warns(DeprecationWarning, match=r"Old\.delay_exchange = "):

        class Old(BackoffPublisher):
            exchange_name = "retries"

    publisher = Old()
    assert publisher.delay_exchange == "retries"
    assert publisher.exchange.name == "retries"
    with pytest.warns(DeprecationWarning, match="exchange_name"):
        assert publisher.exchange_name == "retries"


def test_make_queue_builds_each_delay_queue_once():
    publisher = BackoffPublisher()
    queue = publisher.make_queue(50)
    assert publisher.make_queue(50) is queue
    assert publisher.make_queue(60).name == "backoff--60ms"
    with patch.object(nameko_bridge.backoff, "EXPIRY_GRACE_PERIOD", 123):
        assert publisher.make_queue(50).queue_arguments["x-expires"] == 173
    assert publisher.make_queue(50) is queue


def test_copies_share_the_producer_pool_of_namekos_publisher():
    """One kombu connection per publisher, made once, with the options nameko's
    ``Publisher`` uses (confirms on): kombu's pools key on those, so both share
    one pool of producers and connections."""
    uri = "pyamqp://guest:guest@broker.invalid:5672/vhost"
    publisher = BackoffPublisher()
    publisher.container = SimpleNamespace(config={AMQP_URI_CONFIG_KEY: uri})

    connection = publisher.connection
    assert publisher.connection is connection
    assert connection.transport_options["confirm_publish"] is True
    namekos = Connection(
        uri, transport_options=dict(DEFAULT_TRANSPORT_OPTIONS, confirm_publish=True)
    )
    assert connection.__eqhash__() == namekos.__eqhash__()


@pytest.mark.parametrize("delay_ms", [0, 1, 10, 29, 57, 1001, 4_294_967])
def test_expiration_lands_on_the_millisecond(delay_ms):
    # kombu sends str(int(seconds * 1000))
    assert str(int(_expiration_seconds(delay_ms) * 1000)) == str(delay_ms)


def test_copy_keeps_the_properties_but_not_expiration_or_user():
    message = Mock()
    message.properties = {
        "content_type": "application/x-upper-json",
        "content_encoding": "utf-8",
        "correlation_id": "c",
        "reply_to": "r",
        "priority": 3,
        "expiration": "100",
        "user_id": "guest",
        "application_headers": {"a": 1},
        "message_id": None,
    }
    assert _copy_properties(message) == {
        "content_type": "application/x-upper-json",
        "content_encoding": "utf-8",
        "correlation_id": "c",
        "reply_to": "r",
        "priority": 3,
    }


def test_a_body_without_content_type_is_republished_raw():
    message = Mock()
    message.properties = {}
    assert _copy_properties(message) == {
        "content_type": "application/data",
        "content_encoding": "binary",
    }


class TestExpectBackoffException:
    def test_added_to_nothing(self):
        assert expect_backoff_exception(()) == (Backoff, aio_backoff.Backoff)

    def test_added_to_a_class(self):
        assert expect_backoff_exception(KeyError) == (
            KeyError,
            Backoff,
            aio_backoff.Backoff,
        )

    def test_added_to_a_tuple(self):
        result = expect_backoff_exception((KeyError, Backoff))
        assert result == (KeyError, Backoff, aio_backoff.Backoff)

    def test_already_covered(self):
        assert expect_backoff_exception(Exception) is Exception


def test_retry_headers_leave_message_and_worker_alone():
    stack = ["caller.0", "service.method.1"]
    worker_ctx = SimpleNamespace(call_id_stack=stack)
    message = message_with(a=1)
    headers = retry_headers(message, worker_ctx)
    assert headers == {
        "a": 1,
        "nameko.call_id_stack": ["caller.0", "service.method.1.backoff"],
    }
    assert message.headers == {"a": 1}
    assert stack == ["caller.0", "service.method.1"]


def test_message_settler_names_what_it_needs():
    class Nameko3Consumer:
        consumer = SimpleNamespace(ack_message=print)

    assert message_settler(Nameko3Consumer()) is Nameko3Consumer.consumer
    with pytest.raises(TypeError, match="cannot find how object acks"):
        message_settler(object())


class TestEntrypointRetry:
    class MyService:
        def __init__(self, raises: BaseException | None = None) -> None:
            self.raises = raises

        @entrypoint_retry()
        def method1(self, arg1):
            if self.raises:
                raise self.raises
            return arg1

        @entrypoint_retry(limit=3, schedule=(100, 200))
        def method2(self, arg1, kwarg1=None):
            if self.raises:
                raise self.raises
            return arg1, kwarg1

        @entrypoint_retry(retry_for=(TypeError, KeyError))
        def method3(self, arg1):
            if self.raises:
                raise self.raises
            return arg1

        @entrypoint_retry(retry_for=ValueError, random_sigma=0)
        def method4(self, arg1):
            if self.raises:
                raise self.raises
            return arg1

    def test_defaults(self):
        assert self.MyService().method1(5) == 5
        with pytest.raises(Backoff) as raised:
            self.MyService(ValueError("cause")).method1(5)
        assert raised.value.limit == 20
        assert raised.value.schedule == (
            1000,
            2000,
            3000,
            5000,
            8000,
            13000,
            21000,
            34000,
            55000,
        )
        assert isinstance(raised.value.__cause__, ValueError)

    def test_custom_settings(self):
        assert self.MyService().method2(5, kwarg1=6) == (5, 6)
        with pytest.raises(Backoff) as raised:
            self.MyService(ValueError()).method2(5, kwarg1=6)
        assert raised.value.limit == 3
        assert raised.value.schedule == (100, 200)

    def test_retry_for(self):
        with pytest.raises(ValueError):
            self.MyService(ValueError()).method3(5)
        with pytest.raises(Backoff):
            self.MyService(TypeError()).method3(5)
        with pytest.raises(Backoff):
            self.MyService(KeyError()).method3(5)

    def test_single_class_and_sigma(self):
        with pytest.raises(Backoff) as raised:
            self.MyService(ValueError()).method4(5)
        assert raised.value.random_sigma == 0
        with pytest.raises(KeyError):
            self.MyService(KeyError()).method4(5)

    def test_a_raised_backoff_passes_through(self):
        class Mine(Backoff):
            pass

        error = Mine()
        with pytest.raises(Mine) as raised:
            self.MyService(error).method1(5)
        assert raised.value is error

    def test_defaults_are_captured_at_decoration(self):
        with patch.object(Backoff, "limit", 4):

            @entrypoint_retry()
            def decorated():
                raise ValueError

        with pytest.raises(Backoff) as raised:
            decorated()
        assert raised.value.limit == 4
        assert Backoff.limit == 20
