"""The protocol headers: counting retries and writing a delayed or parked copy."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import DELAY_HEADER, PROTOCOL_VERSION, RETRIES_HEADER, retries_done
from aio_backoff.core._protocol import (
    KEPT_PROPERTIES,
    LEGACY_DEATH_HEADER,
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    PROTOCOL_HEADER,
    delayed_headers,
    legacy_retries,
    parked_headers,
)
from tests.core.strategies import PROPERTY

pytestmark = pytest.mark.core


def death(
    exchange: Any = "backoff", count: Any = 1, queue: str = "backoff--100ms"
) -> dict[str, Any]:
    """An ``x-death`` entry as RabbitMQ writes it (only the fields we look at)."""
    return {
        "exchange": exchange,
        "count": count,
        "queue": queue,
        "reason": "expired",
        "routing-keys": ["orders"],
    }


def test_header_names_and_version() -> None:
    assert DELAY_HEADER == "backoff"
    assert RETRIES_HEADER == "backoff-retries"
    assert PROTOCOL_HEADER == "backoff-protocol"
    assert LEGACY_DEATH_HEADER == "x-death"
    assert PARKED_ERROR_HEADER == "backoff-error"
    assert PARKED_QUEUE_HEADER == "backoff-queue"
    assert PROTOCOL_VERSION == 1


def test_our_retries_header_is_not_an_x_header() -> None:
    # RabbitMQ 4.x treats client-written x- headers as its own; ours must survive
    assert not RETRIES_HEADER.startswith("x-")
    assert not PROTOCOL_HEADER.startswith("x-")


# -- retries_done ----------------------------------------------------------------


@pytest.mark.parametrize("headers", [None, {}, {"content": "unrelated"}])
def test_a_fresh_message_has_no_retries(headers: dict[str, Any] | None) -> None:
    assert retries_done(headers) == 0
    assert legacy_retries(headers, "backoff") == 0


def test_our_header_counts() -> None:
    assert retries_done({RETRIES_HEADER: 3}) == 3
    assert retries_done({RETRIES_HEADER: 0}) == 0


def test_legacy_x_death_sums_the_backoff_exchange_counts() -> None:
    headers = {
        "x-death": [
            death(count=2, queue="backoff--1000ms"),
            death(count=1, queue="backoff--2000ms"),
            death(exchange="orders-dlx", count=5, queue="orders"),
        ]
    }
    assert legacy_retries(headers, "backoff") == 3
    assert retries_done(headers) == 3
    assert retries_done(headers, "orders-dlx") == 5


def test_legacy_x_death_from_the_wire_as_bytes() -> None:
    headers = {
        "x-death": (
            death(exchange=b"backoff", count=2),
            death(exchange="backoff", count=1),
            death(exchange=b"\xff\xfe", count=7),  # not text: not ours
        )
    }
    assert retries_done(headers) == 3


@pytest.mark.parametrize(
    "deaths", ["backoff", b"backoff", 3, {"exchange": "backoff", "count": 4}]
)
def test_an_x_death_that_is_not_a_list_is_ignored(deaths: Any) -> None:
    assert legacy_retries({"x-death": deaths}, "backoff") == 0


@pytest.mark.parametrize(
    "entries",
    [
        [None, "backoff", ["backoff", 4]],
        [death(count=None), death(count=-1), death(count=True), death(count="4")],
        [{"count": 4}, death(exchange=None, count=4), death(exchange=5, count=4)],
    ],
)
def test_malformed_x_death_entries_are_skipped(entries: list[Any]) -> None:
    assert legacy_retries({"x-death": entries}, "backoff") == 0
    assert legacy_retries({"x-death": [*entries, death(count=2)]}, "backoff") == 2


@pytest.mark.parametrize(
    ("ours", "legacy", "expected"),
    [
        (3, 1, 3),  # RabbitMQ 4.x: x-death reset by the republish, ours carries on
        (1, 4, 4),  # an old nameko-amqp-retry service retried it since we last did
        (2, 2, 2),  # RabbitMQ 3.x, both counting the same retries
    ],
)
def test_both_headers_count_the_larger(ours: int, legacy: int, expected: int) -> None:
    headers = {RETRIES_HEADER: ours, "x-death": [death(count=legacy)]}
    assert retries_done(headers) == expected


@pytest.mark.parametrize("bad", ["3", b"3", -1, True, 2.0, None, [3]])
def test_a_malformed_retries_header_is_logged_and_ignored(
    bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {RETRIES_HEADER: bad, "x-death": [death(count=2)]}
    with caplog.at_level(logging.WARNING, logger="aio_backoff"):
        assert retries_done(headers) == 2
    [record] = caplog.records
    assert record.name == "aio_backoff.protocol"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"ignoring malformed backoff-retries header {bad!r}: "
        "expected an int of 0 or more"
    )


def test_a_valid_header_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aio_backoff"):
        assert retries_done({RETRIES_HEADER: 5}) == 5
    assert caplog.records == []


@PROPERTY
@given(
    ours=st.none() | st.integers(min_value=0, max_value=10**9),
    counts=st.lists(
        st.tuples(
            st.sampled_from(["backoff", b"backoff", "other", b"other"]),
            st.integers(min_value=0, max_value=10**6),
        ),
        max_size=6,
    ),
)
def test_retries_done_is_the_max_of_ours_and_the_legacy_sum(
    ours: int | None, counts: list[tuple[str | bytes, int]]
) -> None:
    headers: dict[str, Any] = {"x-death": [death(ex, n) for ex, n in counts]}
    if ours is not None:
        headers[RETRIES_HEADER] = ours
    legacy = sum(n for ex, n in counts if ex in ("backoff", b"backoff"))
    assert retries_done(headers) == max(ours or 0, legacy)


# -- delayed_headers ---------------------------------------------------------------


def test_delayed_headers_keep_the_original_ones_and_x_death() -> None:
    deaths = [death(count=1)]
    original = {"trace-id": "abc", "x-death": deaths, "nested": {"a": [1, 2]}}
    headers = delayed_headers(original, delay_ms=2000, retries=2)
    assert headers == {
        "trace-id": "abc",
        "x-death": deaths,
        "nested": {"a": [1, 2]},
        "backoff": 2000,
        "backoff-retries": 2,
        "backoff-protocol": 1,
    }
    assert original == {"trace-id": "abc", "x-death": deaths, "nested": {"a": [1, 2]}}


def test_delayed_headers_replace_the_previous_protocol_headers() -> None:
    previous = delayed_headers({"k": "v"}, delay_ms=1000, retries=1)
    headers = delayed_headers(previous, delay_ms=3000, retries=2)
    assert headers == {
        "k": "v",
        "backoff": 3000,
        "backoff-retries": 2,
        "backoff-protocol": 1,
    }
    assert previous[DELAY_HEADER] == 1000


def test_delayed_headers_of_a_message_without_headers() -> None:
    assert delayed_headers(None, delay_ms=0, retries=1) == {
        "backoff": 0,
        "backoff-retries": 1,
        "backoff-protocol": 1,
    }


def test_a_delayed_copy_counts_itself() -> None:
    headers: dict[str, Any] | None = None
    for expected in (1, 2, 3):
        headers = delayed_headers(
            headers, delay_ms=100, retries=retries_done(headers) + 1
        )
        assert retries_done(headers) == expected


# -- parking and properties ----------------------------------------------------------


def test_parked_headers() -> None:
    original = {RETRIES_HEADER: 3, "trace-id": "abc"}
    headers = parked_headers(
        original, error="Backoff aborted after '3' retries (~6 seconds)", queue="orders"
    )
    assert headers == {
        "backoff-retries": 3,
        "trace-id": "abc",
        "backoff-error": "Backoff aborted after '3' retries (~6 seconds)",
        "backoff-queue": "orders",
    }
    assert original == {RETRIES_HEADER: 3, "trace-id": "abc"}
    assert parked_headers(None, error="e", queue="q") == {
        "backoff-error": "e",
        "backoff-queue": "q",
    }


def test_kept_properties() -> None:
    assert set(KEPT_PROPERTIES) == {
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "message_id",
        "timestamp",
        "type",
        "app_id",
    }
    # the delay replaces the expiration; the broker checks user_id per connection
    assert "expiration" not in KEPT_PROPERTIES
    assert "user_id" not in KEPT_PROPERTIES
