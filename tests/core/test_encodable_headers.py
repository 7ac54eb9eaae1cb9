"""The headers a copy carries: only what both pamqp and py-amqp can encode again."""

from __future__ import annotations

import datetime
import decimal
import math
import time
from typing import Any

import pytest
from amqp import serialization as py_amqp
from hypothesis import given
from hypothesis import strategies as st
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from aio_backoff import Backoff, backoff_class, plan_retry
from aio_backoff.core import (
    MAX_RETRIES,
    delayed_headers,
    encodable_headers,
    parked_headers,
    retries_done,
)
from tests.core.strategies import PROPERTY

# Each property test takes ~11 s under coverage; next to the other CI lanes on a
# loaded machine one went past the default 60 s timeout (reported as FlakyFailure).
pytestmark = [pytest.mark.core, pytest.mark.timeout(240)]


def pamqp_round_trip(headers: dict[str, Any]) -> dict[str, Any]:
    """Encode with pamqp (aio-pika) and decode with pamqp."""
    encoded = pamqp_encode.field_table(headers)
    return pamqp_decode.field_table(encoded)[1]


def py_amqp_round_trip(headers: dict[str, Any]) -> dict[str, Any]:
    """Encode with py-amqp (kombu, nameko) and decode with py-amqp."""
    encoded = py_amqp.dumps("F", [headers])
    return py_amqp.loads("F", encoded, 0)[0][0]


def same(left: Any, right: Any) -> bool:
    """Equality that holds NaN equal to NaN."""
    if isinstance(left, float) and isinstance(right, float):
        return left == right or (math.isnan(left) and math.isnan(right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            same(left[key], right[key]) for key in left
        )
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same, left, right))
    return bool(left == right)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.text(st.characters(blacklist_categories=()), max_size=5),
    st.binary(max_size=20),
    st.builds(bytearray, st.binary(max_size=8)),
    st.decimals(places=None, allow_nan=True, allow_infinity=True),
    st.datetimes(
        min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 1, 1)
    ),
    st.builds(time.gmtime, st.integers(min_value=-(10**9), max_value=2**33)),
    st.just(object()),
    st.just({1, 2}),
)
keys = st.one_of(
    st.text(max_size=40),
    st.text(min_size=120, max_size=140),
    st.binary(max_size=10),
    st.integers(),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=4),
    ),
    max_leaves=20,
)
hostile_headers = st.dictionaries(keys, values, max_size=8)


@PROPERTY
@given(headers=hostile_headers)
def test_what_is_left_encodes_in_both_libraries(headers: dict[Any, Any]) -> None:
    clean = encodable_headers(headers)
    pamqp_round_trip(clean)
    py_amqp_round_trip(clean)


@PROPERTY
@given(headers=hostile_headers)
def test_cleaning_twice_changes_nothing(headers: dict[Any, Any]) -> None:
    clean = encodable_headers(headers)
    assert same(encodable_headers(clean), clean)


@PROPERTY
@given(headers=hostile_headers)
def test_a_copy_of_a_copy_still_encodes_on_either_stack(
    headers: dict[Any, Any],
) -> None:
    """Received on one stack, republished by the other: still encodable."""
    clean = encodable_headers(headers)
    for received in (pamqp_round_trip(clean), py_amqp_round_trip(clean)):
        again = encodable_headers(received)
        pamqp_round_trip(again)
        py_amqp_round_trip(again)


@PROPERTY
@given(headers=hostile_headers)
def test_pamqp_carries_what_is_left_unchanged(headers: dict[Any, Any]) -> None:
    """No silent change on aio-pika: what we keep comes back as it was sent
    (timestamps to the second, tuples as lists, naive times as UTC)."""
    clean = encodable_headers(headers)
    assert same(encodable_headers(pamqp_round_trip(clean)), _comparable(clean))


def _comparable(value: Any) -> Any:
    """``value`` as pamqp gives it back: whole seconds in UTC, lists."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_comparable(item) for item in value]
    if isinstance(value, datetime.datetime):
        aware = (
            value
            if value.utcoffset() is not None
            else value.replace(tzinfo=datetime.UTC)
        )
        return datetime.datetime.fromtimestamp(int(aware.timestamp()), tz=datetime.UTC)
    if isinstance(value, decimal.Decimal):
        return value.normalize() if value == 0 else value
    return value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("caf\xe9", "caf\xe9", id="utf-8 text kept"),
        pytest.param(b"caf\xc3\xa9", "caf\xe9", id="utf-8 bytes as text"),
        pytest.param(b"caf\xe9", "caf\\xe9", id="non-utf-8 bytes escaped"),
        pytest.param(bytearray(b"ab"), "ab", id="byte array as text"),
        pytest.param("a\udc80", "a\\xed\\xb2\\x80", id="lone surrogate escaped"),
        pytest.param(0.5, 0.5, id="a 32-bit float kept"),
        pytest.param(0.1, "0.1", id="a 64-bit float as text"),
        pytest.param(1e308, "1e+308", id="past a 32-bit float as text"),
        pytest.param(math.inf, math.inf, id="inf kept"),
        pytest.param(2**63 - 1, 2**63 - 1, id="int64 kept"),
        pytest.param(2**64, str(2**64), id="past int64 as text"),
        pytest.param(-(2**63) - 1, str(-(2**63) - 1), id="below int64 as text"),
        pytest.param(decimal.Decimal("1.25"), decimal.Decimal("1.25"), id="decimal"),
        pytest.param(decimal.Decimal("-1.5"), "-1.5", id="negative decimal as text"),
        pytest.param(decimal.Decimal("1E+3"), decimal.Decimal(1000), id="scaled"),
        pytest.param(decimal.Decimal("NaN"), "NaN", id="decimal NaN as text"),
        pytest.param(
            datetime.datetime(1960, 1, 1), "1960-01-01T00:00:00", id="before 1970"
        ),
        pytest.param([1, (2, b"x")], [1, [2, "x"]], id="nested, tuples as lists"),
        pytest.param({"k": {b"\xff": 1}}, {"k": {"\\xff": 1}}, id="bytes key"),
    ],
)
def test_each_kind_of_value(value: Any, expected: Any) -> None:
    clean = encodable_headers({"h": value})
    assert same(clean, {"h": expected})
    assert type(clean["h"]) is type(expected)


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, datetime.date(2020, 1, 1)],
    ids=["object", "set", "date"],
)
def test_values_with_no_amqp_type_are_dropped(value: Any) -> None:
    assert encodable_headers({"h": value, "kept": 1}) == {"kept": 1}


def test_keys_longer_than_128_bytes_and_non_text_keys_are_dropped() -> None:
    headers = {"k" * 129: 1, "k" * 128: 2, 7: 3, "é" * 64: 4, "é" * 65: 5}
    assert encodable_headers(headers) == {"k" * 128: 2, "é" * 64: 4}


def test_deep_nesting_is_cut() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    clean = encodable_headers({"deep": deep, "kept": 1})
    depth = 0
    node = clean.get("deep")
    while isinstance(node, list) and node:
        depth, node = depth + 1, node[0]
    assert depth <= 33
    assert clean["kept"] == 1


def test_a_change_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="aio_backoff")
    encodable_headers({"a": b"\xff", "b": 1e308})
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("aio_backoff")]
    assert len(lines) == 1
    assert "'a': bytes sent as text" in lines[0]
    assert "'b': float 1e+308" in lines[0]


# -- x-death -----------------------------------------------------------------------

DEATH = {
    "count": 2,
    "queue": "backoff--100ms",
    "reason": "expired",
    "exchange": "backoff",
    "routing-keys": ["orders"],
    "time": datetime.datetime(2024, 1, 1),
    "original-expiration": "100",
}


@pytest.mark.parametrize(
    "deaths",
    [
        ["a", "b"],
        [{**DEATH, "count": "5"}],
        [{**DEATH, "count": True}],
        [{**DEATH, "count": -1}],
        [{k: v for k, v in DEATH.items() if k != "count"}],
        [{**DEATH, "queue": 5}],
        [{**DEATH, "reason": None}],
        [{k: v for k, v in DEATH.items() if k != "exchange"}],
        [{**DEATH, "routing-keys": "orders"}],
        [{**DEATH, "routing-keys": [1]}],
        [{**DEATH, "time": "yesterday"}],
        [DEATH, "b"],
        "x-death as text",
        {"count": 1},
        [],
    ],
)
def test_a_malformed_x_death_is_dropped(deaths: Any) -> None:
    """RabbitMQ 3.10 crashes the delay queue dead-lettering such a copy."""
    assert encodable_headers({"x-death": deaths, "kept": 1}) == {"kept": 1}


def test_a_well_formed_x_death_is_kept() -> None:
    deaths = [DEATH, {**DEATH, "queue": "backoff--200ms", "count": 1}]
    assert encodable_headers({"x-death": deaths}) == {"x-death": deaths}
    assert encodable_headers({"x-death": [{**DEATH, "count": 10**20}]}) == {}


def test_a_well_formed_x_death_still_counts_after_cleaning() -> None:
    headers = {"x-death": [DEATH], "junk": b"\xff"}
    assert retries_done(encodable_headers(headers)) == 2


# -- our count ---------------------------------------------------------------------


@pytest.mark.parametrize("forged", [2**63 - 1, 2**63, 2**200])
def test_a_forged_count_reads_within_int64(forged: int) -> None:
    assert retries_done({"backoff-retries": forged}) == MAX_RETRIES


def test_the_next_count_fits_the_wire_with_no_limit() -> None:
    forever = backoff_class(limit=0, random_sigma=0, schedule=(50,))
    plan = plan_retry(forever(), {"backoff-retries": 2**63 - 1}, target_queue="q")
    assert plan.headers["backoff-retries"] == MAX_RETRIES
    pamqp_round_trip(plan.headers)
    py_amqp_round_trip(plan.headers)


def test_a_forged_x_death_count_sum_reads_within_int64() -> None:
    deaths = [{**DEATH, "exchange": "backoff", "count": 2**62}] * 4
    assert retries_done({"x-death": deaths}) == MAX_RETRIES


def test_delayed_and_parked_headers_are_cleaned() -> None:
    hostile = {"bytes": b"\xff", "float": 1e308, "x-death": ["a"]}
    delayed = delayed_headers(hostile, delay_ms=10, retries=1)
    parked = parked_headers(hostile, error="expired", queue="q")
    for headers in (delayed, parked):
        assert "x-death" not in headers
        assert headers["bytes"] == "\\xff"
        pamqp_round_trip(headers)
        py_amqp_round_trip(headers)


def test_a_plan_for_hostile_headers_is_encodable() -> None:
    backoff = backoff_class(schedule=(10,), random_sigma=0)()
    plan = plan_retry(
        backoff, {"x": 1e308, "x-death": [{"count": "5"}]}, target_queue="q"
    )
    assert plan.headers["x"] == "1e+308"
    pamqp_round_trip(plan.headers)
    assert isinstance(backoff, Backoff)
