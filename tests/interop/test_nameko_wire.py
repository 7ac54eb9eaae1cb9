"""nameko's wire format, sans IO: names, context headers, bodies, errors."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal

import pytest

from aio_backoff import Backoff, backoff_class
from aio_backoff.core.nameko_wire import (
    BROADCAST,
    RPC_METHOD_ID_HEADER,
    SERVICE_POOL,
    SINGLETON,
    EventQueue,
    IncorrectSignature,
    MalformedRequest,
    MethodNotFound,
    RemoteError,
    RemoteExpired,
    UnknownService,
    backoff_call_id_stack,
    call_id_stack,
    context_data,
    context_headers,
    decode_reply,
    decode_request,
    dumps,
    encode_reply,
    encode_request,
    event_exchange_name,
    event_queue,
    loads,
    nameko_error,
    new_call_id,
    protocol_error,
    remote_error,
    rpc_binding_key,
    rpc_method_id,
    rpc_queue_name,
    rpc_reply_queue_name,
    rpc_routing_key,
    serialize_error,
)
from aio_backoff.nameko_protocol._context import (
    CallContext,
    _current,
    current_call,
    outgoing_headers,
)

pytestmark = [pytest.mark.core, pytest.mark.timeout(5)]


def test_rpc_names_are_namekos() -> None:
    assert rpc_queue_name("orders") == "rpc-orders"
    assert rpc_routing_key("orders", "total") == "orders.total"
    assert rpc_binding_key("orders") == "orders.*"
    assert rpc_reply_queue_name("standalone_rpc_proxy", "u1") == (
        "rpc.reply-standalone_rpc_proxy-u1"
    )
    assert event_exchange_name("payments") == "payments.events"


def test_service_pool_queue() -> None:
    queue = event_queue(
        "payments", "paid", service_name="orders", method_name="on_paid"
    )
    assert queue == EventQueue(
        name="evt-payments-paid--orders.on_paid",
        exchange="payments.events",
        routing_key="paid",
        durable=True,
        auto_delete=False,
        exclusive=False,
    )


def test_singleton_queue_without_reliable_delivery_is_auto_delete() -> None:
    queue = event_queue(
        "payments",
        "paid",
        service_name="orders",
        method_name="on_paid",
        handler_type="singleton",
        reliable_delivery=False,
    )
    assert queue.name == "evt-payments-paid"
    assert queue.auto_delete
    assert not queue.exclusive


def test_broadcast_queue_names() -> None:
    stable = event_queue(
        "payments",
        "paid",
        service_name="orders",
        method_name="on_paid",
        handler_type=BROADCAST,
        broadcast_identifier="host-1",
    )
    assert stable.name == "evt-payments-paid--orders.on_paid-host-1"
    assert not stable.exclusive
    assert not stable.auto_delete

    fresh = event_queue(
        "payments",
        "paid",
        service_name="orders",
        method_name="on_paid",
        handler_type=BROADCAST,
        reliable_delivery=False,
    )
    prefix = "evt-payments-paid--orders.on_paid-"
    assert fresh.name.startswith(prefix)
    assert len(fresh.name) == len(prefix) + 32
    assert fresh.exclusive
    assert fresh.auto_delete


def test_broadcast_with_reliable_delivery_needs_an_identifier() -> None:
    with pytest.raises(ValueError, match="broadcast_identifier"):
        event_queue(
            "payments",
            "paid",
            service_name="orders",
            method_name="on_paid",
            handler_type=BROADCAST,
        )


def test_unknown_handler_type() -> None:
    with pytest.raises(ValueError, match="everyone"):
        event_queue(
            "a", "b", service_name="c", method_name="d", handler_type="everyone"
        )
    assert SERVICE_POOL == "service_pool"
    assert SINGLETON == "singleton"


def test_call_ids() -> None:
    call_id = new_call_id("orders", "total")
    service, method, rest = call_id.split(".", 2)
    assert (service, method) == ("orders", "total")
    uuid.UUID(rest)

    parents = [f"p{i}" for i in range(12)]
    stack = call_id_stack(parents, "me")
    assert stack == [*parents[-10:], "me"]
    assert call_id_stack([], "me", tracked=0) == ["me"]

    assert backoff_call_id_stack(["a", "b"]) == ["a", "b.backoff"]
    assert backoff_call_id_stack([]) == []


def test_context_headers_round_trip() -> None:
    headers = context_headers(
        {"call_id_stack": ["x.y.1"], "user_id": "u", "language": None}
    )
    assert headers == {"nameko.call_id_stack": ["x.y.1"], "nameko.user_id": "u"}

    data = context_data(
        {**headers, "backoff": 10, "nameko.call_id_stack": ["a", b"b", 3]}
    )
    assert data == {"call_id_stack": ["a", "b"], "user_id": "u", "backoff": 10}
    assert context_data(None) == {"call_id_stack": []}
    assert context_data({"nameko.call_id_stack": "not a list"})["call_id_stack"] == []


def test_outgoing_headers_outside_and_inside_a_handler() -> None:
    outside = outgoing_headers("client", "call", {"user_id": "u"})
    assert outside["nameko.user_id"] == "u"
    (only,) = outside["nameko.call_id_stack"]
    assert only.startswith("client.call.")

    handling = CallContext(
        service="orders",
        method="total",
        call_id_stack=tuple(f"c{i}" for i in range(11)),
        data={"language": "en"},
        headers={"backoff-retries": 2},
    )
    assert handling.call_id == "c10"
    assert handling.retries == 2
    token = _current.set(handling)
    try:
        assert current_call() is handling
        inside = outgoing_headers("client", "call", tracked=3)
    finally:
        _current.reset(token)
    assert current_call() is None
    assert inside == {
        "nameko.language": "en",
        "nameko.call_id_stack": ["c7", "c8", "c9", "c10"],
    }


def test_json_with_kombus_envelopes() -> None:
    value = {
        "when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "day": date(2024, 1, 2),
        "at": time(3, 4, 5),
        "price": Decimal("1.10"),
        "id": uuid.UUID(int=7),
        "text": b"caf\xc3\xa9",
        "raw": b"\xff\x00",
        "plain": [1, "two", None],
        "lookalike": {"__type__": "unknown", "__value__": 1},
    }
    body = dumps(value)
    assert b'"__type__": "datetime"' in body
    assert b'"__type__": "base64"' in body
    assert loads(body) == {**value, "text": "café".encode()}
    assert loads(body.decode()) == loads(body)
    with pytest.raises(TypeError, match="object"):
        dumps(object())


def test_request_round_trip() -> None:
    assert decode_request(encode_request((1, 2), {"x": 3})) == ([1, 2], {"x": 3})


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not nameko's JSON"),
        (b"\xff\xfe{", "not nameko's JSON"),
        (b"[" * 100_000, "RecursionError"),
        (
            b'{"args": [{"__type__": "decimal", "__value__": "xyz"}], "kwargs": {}}',
            "Invalid",
        ),
        (
            b'{"args": [{"__type__": "bytes", "__value__": 1}], "kwargs": {}}',
            "Attribute",
        ),
        (
            b'{"args": [{"__type__": "uuid", "__value__": 1}], "kwargs": {}}',
            "not nameko",
        ),
        (
            b'{"args": [{"__type__": "date", "__value__": 1}], "kwargs": {}}',
            "TypeError",
        ),
        (b"[]", "missing"),
        (b'{"args": []}', "missing"),
        (b'{"args": {}, "kwargs": {}}', "must be a list"),
        (b'{"args": [], "kwargs": []}', "must be a list"),
    ],
)
def test_malformed_requests(body: bytes, match: str) -> None:
    with pytest.raises(MalformedRequest, match=match) as caught:
        decode_request(body)
    assert caught.value.exc_path == "nameko.exceptions.MalformedRequest"
    assert serialize_error(caught.value)["exc_type"] == "MalformedRequest"


def test_undecodable_bodies_raise_value_error_only() -> None:
    """Whatever a body holds, ``loads`` raises ValueError (never RecursionError,
    AttributeError, TypeError or decimal.InvalidOperation), so every caller that
    handles ValueError settles the message."""
    for body in (
        b"[" * 100_000,
        b'{"__type__": "decimal", "__value__": "xyz"}',
        b'{"__type__": "bytes", "__value__": 1}',
        b'{"__type__": "uuid", "__value__": 1}',
        b'{"__type__": "time", "__value__": []}',
        b"\xc3\x28",
    ):
        with pytest.raises(ValueError, match="not nameko's JSON"):
            loads(body)


def test_the_method_id_header_is_trusted_only_on_a_delayed_copy() -> None:
    forged = {RPC_METHOD_ID_HEADER: "svc.other"}
    assert rpc_method_id(forged, "svc.called") == "svc.called"
    assert rpc_method_id({}, "svc.called") == "svc.called"
    assert rpc_method_id(None, None) == ""
    copy = {**forged, "backoff-retries": 1}
    assert rpc_method_id(copy, "rpc-svc") == "svc.other"
    legacy = {
        **forged,
        "x-death": [{"exchange": "backoff", "count": 1, "queue": "backoff--5ms"}],
    }
    assert rpc_method_id(legacy, "rpc-svc") == "svc.other"
    assert rpc_method_id(legacy, "rpc-svc", delay_exchange="elsewhere") == "rpc-svc"
    assert rpc_method_id({"backoff-retries": 1}, "rpc-svc") == "rpc-svc"


def test_the_method_id_is_never_context() -> None:
    headers = {
        RPC_METHOD_ID_HEADER: "svc.work",
        "nameko.user_id": "u",
        "nameko.call_id_stack": ["a.b.1"],
    }
    data = context_data(headers)
    assert data == {"user_id": "u", "call_id_stack": ["a.b.1"]}
    assert context_headers({"rpc_method_id": "svc.work", "user_id": "u"}) == {
        "nameko.user_id": "u"
    }
    # nor sent on by a call or event made inside a handler, whatever it was given
    token = _current.set(
        CallContext("svc", "work", ("a.b.1",), data={"rpc_method_id": "svc.work"})
    )
    try:
        sent = outgoing_headers("svc", "call", {"rpc_method_id": "svc.work"})
    finally:
        _current.reset(token)
    assert RPC_METHOD_ID_HEADER not in sent


def test_reply_round_trip() -> None:
    assert decode_reply(encode_reply({"total": 3})) == {"total": 3}
    assert decode_reply(b'{"result": null, "error": null}') is None


def test_unserializable_result_becomes_namekos_error() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError

    with pytest.raises(RemoteError, match="Unserializable value: `<odd>`") as caught:
        decode_reply(encode_reply(Odd()))
    assert caught.value.exc_path == "nameko.exceptions.UnserializableValueError"
    assert caught.value.exc_args == []
    with pytest.raises(RemoteError, match=r"\[__repr__ failed\]"):
        decode_reply(encode_reply(Broken()))


@pytest.mark.parametrize(
    ("body", "match"),
    [(b"<html>", "not JSON"), (b"{}", "neither"), (b"[1]", "neither")],
)
def test_malformed_replies(body: bytes, match: str) -> None:
    with pytest.raises(RemoteError, match=match) as caught:
        decode_reply(body)
    assert caught.value.exc_type == "MalformedReply"


def test_serialize_error_like_nameko() -> None:
    class Weird:
        def __str__(self) -> str:
            raise RuntimeError

    error = ValueError("bad", {"k": (1, 2)}, Weird())
    data = serialize_error(error)
    assert data == {
        "exc_type": "ValueError",
        "exc_path": "builtins.ValueError",
        "exc_args": ["bad", {"k": ["1", "2"]}, "[__unicode__ failed]"],
        "value": str(error),
    }


def test_expired_is_remote_expired_and_a_backoff_expired() -> None:
    try:
        raise backoff_class(limit=3)().expired(3)
    except Backoff.Expired as expired:
        data = serialize_error(expired)
    assert data["exc_type"] == "Expired"
    assert data["exc_path"] == f"{Backoff.Expired.__module__}.Expired"

    with pytest.raises(Backoff.Expired) as caught:
        decode_reply(encode_reply(error=data))
    error = caught.value
    assert isinstance(error, RemoteExpired)
    assert isinstance(error, RemoteError)
    assert error.limit == error.retries == 3
    assert str(error) == f"Expired {data['value']}"

    # relayed by a service that called the expired one, as nameko relays it
    relayed = serialize_error(error)
    assert relayed["exc_type"] == "RemoteError"
    assert relayed["exc_path"] == "nameko.exceptions.RemoteError"
    assert relayed["value"] == f"Expired {data['value']}"
    assert type(remote_error(relayed)) is RemoteError


def test_upstream_expired_without_the_usual_message() -> None:
    error = remote_error(
        {"exc_type": "Expired", "exc_path": "nameko_amqp_retry.backoff.Expired"}
    )
    assert isinstance(error, RemoteExpired)
    assert error.value == ""
    assert error.limit == 0


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("MethodNotFound", MethodNotFound),
        ("MalformedRequest", MalformedRequest),
        ("IncorrectSignature", IncorrectSignature),
    ],
)
def test_namekos_own_errors(kind: str, cls: type[RemoteError]) -> None:
    data = protocol_error(kind, "nope")
    assert data == {
        "exc_type": kind,
        "exc_path": f"nameko.exceptions.{kind}",
        "exc_args": ["nope"],
        "value": "nope",
    }
    error = remote_error(data)
    assert type(error) is cls
    assert serialize_error(nameko_error(cls, "nope")) == data
    assert serialize_error(error) == data  # relayed as itself


def test_remote_error_tolerates_odd_fields() -> None:
    error = remote_error({"exc_type": 3, "value": 4, "exc_args": "x"})
    assert type(error) is RemoteError
    assert error.exc_type is None
    assert error.value == "4"
    assert error.exc_args == []
    assert remote_error({}).value == ""


def test_unknown_service_says_what_to_do() -> None:
    error = UnknownService("ghost")
    assert error.service == "ghost"
    assert "start the service" in str(error)


def test_a_callers_retry_headers_are_not_taken_as_context() -> None:
    # nameko sends its worker's whole context on as nameko.*: the retried
    # request's count, method id and x-death must not become the callee's
    received = {
        "nameko.backoff-retries": 3,
        "nameko.backoff": 50,
        "nameko.rpc_method_id": "upstream.chain",
        "nameko.x-death": [{"count": 1, "exchange": "backoff"}],
        "nameko.call_id_stack": ["upstream.chain.1"],
        "nameko.user": "ada",
    }
    assert context_data(received) == {
        "call_id_stack": ["upstream.chain.1"],
        "user": "ada",
    }


def test_a_delayed_copy_keeps_its_own_count_over_a_carried_one() -> None:
    data = context_data({"backoff-retries": 2, "nameko.backoff-retries": 7})
    assert data["backoff-retries"] == 2


def test_delivery_keys_are_never_sent_on() -> None:
    sent = context_headers(
        {
            "backoff-retries": 2,
            "backoff": 50,
            "x-death": [{"count": 1}],
            "rpc_method_id": "svc.work",
            "user": "ada",
        }
    )
    assert sent == {"nameko.user": "ada"}
