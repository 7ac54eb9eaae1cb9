"""``@rpc`` with Backoff: the caller blocks until the final result or Expired."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kombu import Connection
from kombu.messaging import Exchange, Queue
from kombu.pools import connections, producers
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.exceptions import IncorrectSignature, MethodNotFound, RemoteError
from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy
from nameko.rpc import rpc as nameko_rpc
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_extension

import aio_backoff
from nameko_bridge import Backoff, entrypoint_retry
from nameko_bridge.constants import RPC_METHOD_ID_HEADER_KEY
from nameko_bridge.rpc import Rpc, rpc

from .conftest import backs_off

pytestmark = pytest.mark.timeout(30)


def test_rpc_backs_off_then_returns(
    container, entrypoint_tracker, rpc_proxy, wait_for_result, backoff_count
):
    with entrypoint_waiter(container, "method", callback=wait_for_result) as result:
        reply = rpc_proxy.service.method("arg")

    assert reply == result.get() == "result"
    assert entrypoint_tracker.get_results() == [None] * backoff_count + ["result"]
    assert entrypoint_tracker.exception_types() == [Backoff] * backoff_count + [None]


def test_rpc_expiry_reaches_the_caller(
    container, entrypoint_tracker, rpc_proxy, limited_backoff, wait_for_backoff_expired
):
    with (
        entrypoint_waiter(
            container, "method", callback=wait_for_backoff_expired
        ) as result,
        pytest.raises(RemoteError) as raised,
    ):
        rpc_proxy.service.method("arg")
    assert raised.value.exc_type == "Expired"
    assert f"Backoff aborted after '{limited_backoff}' retries" in str(raised.value)

    with pytest.raises(Backoff.Expired) as expired:
        result.get()
    assert f"Backoff aborted after '{limited_backoff}' retries" in str(expired.value)
    assert isinstance(expired.value.__cause__, Backoff)
    assert entrypoint_tracker.exception_types() == [Backoff] * limited_backoff + [
        Backoff.Expired
    ]


def test_multiple_services(
    rpc_proxy,
    wait_for_result,
    counter,
    backoff_count,
    start_service,
    entrypoint_tracker,
):
    class ServiceOne:
        name = "service_one"

        @rpc
        def method(self, payload):
            return backs_off(counter["one"], backoff_count, "one")

    class ServiceTwo:
        name = "service_two"

        @rpc
        def method(self, payload):
            return backs_off(counter["two"], backoff_count, "two")

    container_one = start_service(ServiceOne)
    container_two = start_service(ServiceTwo)

    with entrypoint_waiter(container_one, "method", callback=wait_for_result):
        assert rpc_proxy.service_one.method("arg") == "one"
    with entrypoint_waiter(container_two, "method", callback=wait_for_result):
        assert rpc_proxy.service_two.method("arg") == "two"

    assert counter["one"] == counter["two"] == backoff_count + 1
    assert entrypoint_tracker.get_results() == (
        [None] * backoff_count + ["one"] + [None] * backoff_count + ["two"]
    )


def test_multiple_methods_of_one_service(
    start_service,
    wait_for_result,
    rpc_proxy,
    entrypoint_tracker,
    counter,
    backoff_count,
):
    class Service:
        name = "service"

        @rpc
        def a(self):
            return backs_off(counter["a"], backoff_count, "a")

        @rpc
        def b(self):
            return backs_off(counter["b"], backoff_count, "b")

    container = start_service(Service)

    with entrypoint_waiter(container, "a", callback=wait_for_result):
        assert rpc_proxy.service.a() == "a"
    with entrypoint_waiter(container, "b", callback=wait_for_result):
        assert rpc_proxy.service.b() == "b"

    assert counter["a"] == counter["b"] == backoff_count + 1
    assert entrypoint_tracker.get_results() == (
        [None] * backoff_count + ["a"] + [None] * backoff_count + ["b"]
    )


def test_other_exceptions_are_replied_as_usual(start_service, rpc_proxy, counter):
    class Boom(Exception):
        pass

    class Service:
        name = "service"

        @rpc
        def method(self):
            counter.increment()
            raise Boom("no")

    start_service(Service)

    with pytest.raises(RemoteError) as raised:
        rpc_proxy.service.method()
    assert raised.value.exc_type == "Boom"
    assert counter == 1


def test_error_while_handling_the_message_is_replied(
    container_factory, rabbit_config, rpc_proxy
):
    class Boom(Exception):
        pass

    class Service:
        name = "service"

        @rpc
        def method(self):
            return "OK"

    container = container_factory(Service, rabbit_config)
    with pytest.MonkeyPatch.context() as monkeypatch:

        def broken(self, body, message):
            raise Boom("while handling")

        monkeypatch.setattr(Rpc, "handle_message", broken)
        container.start()
        with pytest.raises(RemoteError) as raised:
            rpc_proxy.service.method()
    assert raised.value.exc_type == "Boom"


def test_unknown_method_is_replied_as_method_not_found(container, rpc_proxy):
    with pytest.raises(MethodNotFound):
        rpc_proxy.service.missing()


def test_the_method_id_header_wins_on_a_delayed_copy(container, rabbit_config):
    """How a retried request finds its method again: a delayed copy (it carries
    ``backoff-retries``) comes back with the queue's name as routing key, and
    ``nameko.rpc_method_id`` names the method."""
    replies = raw_rpc_call(
        rabbit_config,
        routing_key="service.not_this_one",
        headers={RPC_METHOD_ID_HEADER_KEY: "service.method", "backoff-retries": 3},
    )
    assert [reply.decode() for reply in replies] == [
        {"result": "result", "error": None}
    ]


def test_a_method_id_header_on_a_new_request_is_ignored(start_service, rabbit_config):
    """Finding 1: a request that is not a delayed copy is routed by its routing
    key, whatever ``nameko.rpc_method_id`` it carries (a leftover of a retried call
    upstream)."""

    class Service:
        name = "service"

        @rpc
        def method(self, payload):
            return "method"

    start_service(Service)
    replies = raw_rpc_call(
        rabbit_config,
        routing_key="service.method",
        headers={RPC_METHOD_ID_HEADER_KEY: "upstream.work"},
    )
    assert [reply.decode() for reply in replies] == [
        {"result": "method", "error": None}
    ]


class ContextData(DependencyProvider):
    """Gives the service the worker's context data."""

    def get_dependency(self, worker_ctx):
        return worker_ctx.context_data


@pytest.mark.parametrize(
    "other_rpc",
    [pytest.param(rpc, id="nameko_bridge"), pytest.param(nameko_rpc, id="nameko")],
)
def test_a_retried_method_can_call_another_service(
    start_service, rpc_proxy, counter, other_rpc
):
    """Finding 1, nameko to nameko: ``work`` backs off once, and on its retry calls
    ``other.echo`` through ``RpcProxy``. The method id of the retried request stays
    out of the worker's context, so it does not travel on the call: the call reaches
    ``echo`` (a ``nameko_bridge`` service used to answer ``MethodNotFound: work``),
    and ``echo``'s context, where nameko puts every header of a request, has none."""
    contexts: dict[str, list[dict[str, Any]]] = {"work": [], "echo": []}

    class Other:
        name = "other"

        context = ContextData()

        @other_rpc
        def echo(self, value):
            contexts["echo"].append(dict(self.context))
            return value

    class Caller:
        name = "caller"

        other = RpcProxy("other")
        context = ContextData()

        @rpc
        def work(self, value):
            contexts["work"].append(dict(self.context))
            if counter.increment() == 1:
                raise Backoff()
            return self.other.echo(value)

    start_service(Other)
    start_service(Caller)

    assert rpc_proxy.caller.work("hello") == "hello"
    assert counter == 2
    [echo] = contexts["echo"]
    assert echo["call_id_stack"][-2].startswith("caller.work.")
    for context in [*contexts["work"], echo]:
        assert "rpc_method_id" not in context


def test_aio_backoff_raised_in_a_nameko_entrypoint(start_service, rpc_proxy, counter):
    class CoreBackoff(aio_backoff.Backoff):
        schedule = (20,)
        random_sigma = 0
        limit = 2

    class Service:
        name = "service"

        @rpc
        def method(self, fail_times):
            if counter.increment() <= fail_times:
                raise CoreBackoff()
            return counter.items[counter._total].value

    start_service(Service)

    assert rpc_proxy.service.method(2) == 3
    with pytest.raises(RemoteError) as raised:
        rpc_proxy.service.method(10)
    assert raised.value.exc_type == "Expired"
    assert counter == 3 + 3  # the first call and its two retries


def test_backoff_is_expected_also_when_never_started(container_factory, rabbit_config):
    class Boom(Exception):
        pass

    class Service:
        name = "service"

        @rpc
        def plain(self):
            pass  # pragma: no cover - never called

        @rpc(expected_exceptions=Boom)
        def with_own(self):
            pass  # pragma: no cover - never called

    container = container_factory(Service, rabbit_config)  # not started
    plain = get_extension(container, Rpc, method_name="plain")
    with_own = get_extension(container, Rpc, method_name="with_own")

    for entrypoint in (plain, with_own):
        assert issubclass(Backoff, entrypoint.expected_exceptions)
        assert issubclass(aio_backoff.Backoff, entrypoint.expected_exceptions)
    assert issubclass(Boom, with_own.expected_exceptions)
    assert not issubclass(ValueError, plain.expected_exceptions)


def raw_rpc_call(
    rabbit_config: dict[str, Any],
    *,
    routing_key: str = "service.method",
    headers: dict[str, Any] | None = None,
    settle_time: float = 0.3,
) -> list[Any]:
    """Send one RPC request by hand and collect every reply to it.

    Waits for the first reply, then ``settle_time`` more for any other one.
    """
    uri = rabbit_config[AMQP_URI_CONFIG_KEY]
    rpc_exchange = Exchange("nameko-rpc", type="topic", durable=True)
    # nameko replies through its RPC exchange, with reply_to as the routing key
    reply_queue = Queue(
        "test-replies", exchange=rpc_exchange, routing_key="test-replies"
    )
    conn = Connection(uri)
    replies: list[Any] = []
    with connections[conn].acquire(block=True) as connection:
        bound = reply_queue.bind(connection)
        bound.declare()
        with producers[conn].acquire(block=True) as producer:
            producer.publish(
                {"args": ["x"], "kwargs": {}},
                exchange=rpc_exchange,
                routing_key=routing_key,
                reply_to=reply_queue.name,
                correlation_id="the-call",
                serializer="json",
                headers=headers or {},
                declare=[rpc_exchange],
            )
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            message = bound.get(no_ack=True)
            if message is None:
                time.sleep(0.02)
            else:
                replies.append(message)
        time.sleep(settle_time)
        while (message := bound.get(no_ack=True)) is not None:
            replies.append(message)
    return replies


def test_the_reply_is_sent_once(container, rabbit_config, backoff_count, counter):
    """Exactly one reply arrives, for the last attempt, although the method backed
    off several times."""
    replies = raw_rpc_call(rabbit_config)

    assert counter == backoff_count + 1
    assert len(replies) == 1
    assert replies[0].properties["correlation_id"] == "the-call"
    assert replies[0].decode() == {"result": "result", "error": None}


def test_entrypoint_retry_on_an_rpc_method(start_service, rpc_proxy, counter):
    class Service:
        name = "service"

        @rpc
        @entrypoint_retry(retry_for=KeyError, schedule=(20,), limit=2, random_sigma=0)
        def lookup(self, key, fail_times=0):
            if counter[key].increment() <= fail_times:
                raise KeyError(key)
            return key

    start_service(Service)

    assert rpc_proxy.service.lookup("a", fail_times=2) == "a"
    assert counter["a"] == 3
    with pytest.raises(RemoteError) as raised:
        rpc_proxy.service.lookup("b", fail_times=5)
    assert raised.value.exc_type == "Expired"
    assert counter["b"] == 3
    # the decorated method keeps its signature: nameko still checks the arguments
    with pytest.raises(IncorrectSignature):
        rpc_proxy.service.lookup()
