"""Schedule helpers: the delay maths, checked with properties and examples."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import (
    capped,
    exponential,
    fixed,
    full_jitter,
    gauss_jitter,
    round_to_nearest,
    sequence,
)
from tests.core.strategies import (
    PROPERTY,
    any_delays_ms,
    delays_ms,
    factors,
    indexes,
    small_indexes,
    whole_delays_ms,
)

pytestmark = pytest.mark.core

HUGE_INDEXES = [10**6, 10**18, 10**300]


# -- fixed ---------------------------------------------------------------------


@PROPERTY
@given(delay=delays_ms, index=indexes)
def test_fixed_is_the_same_delay_at_every_index(delay: float, index: int) -> None:
    assert fixed(delay)(index) == delay


@pytest.mark.parametrize(
    ("delay", "error", "text"),
    [
        (-1, ValueError, "fixed(delay_ms) must be 0 or more milliseconds, got -1"),
        (math.nan, ValueError, "fixed(delay_ms) must be 0 or more milliseconds"),
        ("100", TypeError, "fixed(delay_ms) must be a number of milliseconds"),
        (True, TypeError, "got True"),
    ],
)
def test_fixed_rejects_bad_delays(
    delay: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        fixed(delay)
    assert text in str(caught.value)


@pytest.mark.parametrize(
    "schedule", [fixed(10), sequence([1, 2]), exponential(10)], ids=repr
)
def test_schedules_reject_a_negative_index(schedule: Any) -> None:
    with pytest.raises(ValueError, match=r"index must be 0 or more .* got -1"):
        schedule(-1)


# -- sequence ------------------------------------------------------------------


@PROPERTY
@given(items=st.lists(whole_delays_ms, min_size=1, max_size=12), index=indexes)
def test_sequence_follows_its_items_then_repeats_the_last(
    items: list[int], index: int
) -> None:
    schedule = sequence(items)
    if index < len(items):
        assert schedule(index) == items[index]
    else:
        assert schedule(index) == items[-1]


@PROPERTY
@given(items=st.lists(whole_delays_ms, min_size=1, max_size=12), extra=indexes)
def test_sequence_is_constant_past_its_end(items: list[int], extra: int) -> None:
    schedule = sequence(items)
    end = len(items) - 1
    assert schedule(end + extra) == schedule(end) == items[-1]


def test_sequence_copies_its_items() -> None:
    items = [100, 200]
    schedule = sequence(items)
    items.append(300)
    assert schedule(5) == 200


def test_sequence_accepts_any_sequence() -> None:
    schedule = sequence(range(0, 30, 10))
    assert [schedule(i) for i in range(5)] == [0, 10, 20, 20, 20]


def test_sequence_keeps_negative_items_for_the_caller() -> None:
    assert sequence([-500])(3) == -500


def test_sequence_needs_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least one delay, got an empty sequence"):
        sequence([])


@pytest.mark.parametrize(
    ("items", "text"),
    [
        ([100, "200"], "schedule item 1 must be a number of milliseconds, got '200'"),
        ([True], "schedule item 0 must be a number of milliseconds, got True"),
        ([None], "got None"),
    ],
)
def test_sequence_rejects_items_that_are_not_numbers(items: Any, text: str) -> None:
    with pytest.raises(TypeError) as caught:
        sequence(items)
    assert text in str(caught.value)


# -- exponential ---------------------------------------------------------------


def test_exponential_example() -> None:
    schedule = exponential(100)
    assert [schedule(i) for i in range(5)] == [100, 200, 400, 800, 1600]
    tripled = exponential(10, factor=3, cap_ms=500)
    assert [tripled(i) for i in range(6)] == [10, 30, 90, 270, 500, 500]


@PROPERTY
@given(
    initial=delays_ms,
    factor=factors,
    cap=st.none() | delays_ms,
    index=indexes,
)
def test_exponential_is_never_negative_and_honours_its_cap(
    initial: float, factor: float, cap: float | None, index: int
) -> None:
    delay = exponential(initial, factor=factor, cap_ms=cap)(index)
    assert delay >= 0
    assert not math.isnan(delay)
    if cap is not None:
        assert delay <= cap


@PROPERTY
@given(
    initial=delays_ms,
    factor=factors,
    cap=st.none() | delays_ms,
    first=indexes,
    second=indexes,
)
def test_exponential_is_non_decreasing_in_the_index(
    initial: float, factor: float, cap: float | None, first: int, second: int
) -> None:
    schedule = exponential(initial, factor=factor, cap_ms=cap)
    low, high = sorted((first, second))
    assert schedule(low) <= schedule(high)


@PROPERTY
@given(
    initial=st.integers(min_value=0, max_value=10**6),
    factor=st.integers(min_value=1, max_value=10),
    index=st.integers(min_value=0, max_value=20),
)
def test_exponential_matches_its_formula(initial: int, factor: int, index: int) -> None:
    exact = initial * factor**index
    assert exponential(initial, factor=factor)(index) == pytest.approx(exact)
    cap = 10**5
    assert exponential(initial, factor=factor, cap_ms=cap)(index) == pytest.approx(
        min(exact, cap)
    )


@pytest.mark.parametrize("index", HUGE_INDEXES)
def test_exponential_does_not_overflow_at_huge_indexes(index: int) -> None:
    assert exponential(100, cap_ms=60_000)(index) == 60_000
    assert exponential(100)(index) == math.inf
    assert exponential(100, factor=1)(index) == 100
    assert exponential(0)(index) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"initial_ms": -1}, ValueError, "exponential(initial_ms) must be 0 or more"),
        ({"initial_ms": math.nan}, ValueError, "exponential(initial_ms)"),
        ({"initial_ms": "1"}, TypeError, "exponential(initial_ms) must be a number"),
        ({"initial_ms": 1, "factor": 0.5}, ValueError, "factor) must be a number of 1"),
        ({"initial_ms": 1, "factor": math.nan}, ValueError, "got nan"),
        ({"initial_ms": 1, "factor": "2"}, TypeError, "got '2'"),
        ({"initial_ms": 1, "factor": True}, TypeError, "got True"),
        ({"initial_ms": 1, "cap_ms": -5}, ValueError, "exponential(cap_ms) must be 0"),
        ({"initial_ms": 1, "cap_ms": math.nan}, ValueError, "exponential(cap_ms)"),
    ],
)
def test_exponential_rejects_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        exponential(**kwargs)
    assert text in str(caught.value)


# -- full_jitter and capped --------------------------------------------------


@PROPERTY
@given(upper=any_delays_ms, index=small_indexes, seed=st.integers(0, 2**32))
def test_full_jitter_stays_between_zero_and_the_wrapped_delay(
    upper: float, index: int, seed: int
) -> None:
    rng = random.Random(seed)
    delay = full_jitter(lambda _: upper, rng=rng.uniform)(index)
    assert 0 <= delay <= abs(upper)


def test_full_jitter_draws_uniformly_up_to_the_wrapped_delay() -> None:
    calls: list[tuple[float, float]] = []

    def rng(low: float, high: float) -> float:
        calls.append((low, high))
        return high / 2

    schedule = full_jitter(exponential(100), rng=rng)
    assert schedule(3) == 400
    assert calls == [(0.0, 800)]


@pytest.mark.parametrize("upper", [math.inf, -math.inf])
def test_full_jitter_leaves_an_infinite_delay_to_the_cap(upper: float) -> None:
    assert full_jitter(lambda _: upper)(0) == math.inf
    assert capped(full_jitter(lambda _: upper), 700)(0) == 700


def test_full_jitter_uses_random_uniform_by_default() -> None:
    delays = {full_jitter(fixed(1000))(0) for _ in range(50)}
    assert all(0 <= delay <= 1000 for delay in delays)
    assert len(delays) > 1


@PROPERTY
@given(
    initial=delays_ms,
    factor=factors,
    cap=delays_ms,
    index=indexes,
    seed=st.integers(0, 2**32),
)
def test_jitter_before_the_cap_keeps_the_cap(
    initial: float, factor: float, cap: float, index: int, seed: int
) -> None:
    rng = random.Random(seed)
    schedule = capped(
        full_jitter(exponential(initial, factor=factor), rng=rng.uniform), cap
    )
    delay = schedule(index)
    assert 0 <= delay <= cap


@PROPERTY
@given(value=any_delays_ms, cap=delays_ms)
def test_capped_is_the_minimum(value: float, cap: float) -> None:
    assert capped(lambda _: value, cap)(0) == min(value, cap)


@pytest.mark.parametrize(
    ("cap", "error"), [(-1, ValueError), (math.nan, ValueError), ("9", TypeError)]
)
def test_capped_rejects_a_bad_cap(cap: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"capped\(cap_ms\) must be"):
        capped(fixed(1), cap)


# -- round_to_nearest ----------------------------------------------------------


def test_round_to_nearest_examples() -> None:
    assert round_to_nearest(1009, 20) == 1000
    assert round_to_nearest(1011, 20) == 1020
    assert round_to_nearest(-31, 20) == -40
    assert round_to_nearest(1234.5, 0.5) == 1234
    assert isinstance(round_to_nearest(10.0, 2.5), int)


@PROPERTY
@given(
    value=st.integers(-(10**12), 10**12),
    interval=st.integers(min_value=1, max_value=10**6),
)
def test_round_to_nearest_lands_on_the_nearest_multiple(
    value: int, interval: int
) -> None:
    result = round_to_nearest(value, interval)
    assert result % interval == 0
    assert abs(result - value) <= interval / 2
    assert round_to_nearest(result, interval) == result
    assert round_to_nearest(value, -interval) == result


@PROPERTY
@given(
    value=st.floats(min_value=-1e12, max_value=1e12),
    interval=st.floats(min_value=0.001, max_value=1e6),
)
def test_round_to_nearest_is_within_half_an_interval(
    value: float, interval: float
) -> None:
    result = round_to_nearest(value, interval)
    # int() truncates the rounded multiple, so allow one more ms (and float slack)
    assert abs(result - value) <= interval / 2 + 1 + abs(value) * 1e-12


@pytest.mark.parametrize("interval", [0, 0.0, math.nan, math.inf, -math.inf])
def test_round_to_nearest_needs_a_finite_non_zero_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="needs a non-zero finite interval"):
        round_to_nearest(100, interval)


# -- gauss_jitter --------------------------------------------------------------


def _fixed_draw(offset: float) -> Any:
    def gauss(mu: float, sigma: float) -> float:
        return mu + offset * sigma

    return gauss


def test_gauss_jitter_without_sigma_is_the_delay_made_a_positive_int() -> None:
    def gauss(mu: float, sigma: float) -> float:
        raise AssertionError("no draw without jitter")

    assert gauss_jitter(1500.7, sigma_ms=0, groups_per_sigma=5, gauss=gauss) == 1500
    assert gauss_jitter(-800, sigma_ms=0, groups_per_sigma=0, gauss=gauss) == 800


def test_gauss_jitter_example() -> None:
    # gauss(1000, 100) drew 1049.9 -> int 1049 -> nearest 20 ms -> 1040
    assert (
        gauss_jitter(1000, sigma_ms=100, groups_per_sigma=5, gauss=_fixed_draw(0.499))
        == 1040
    )
    # a draw below zero is made positive
    assert (
        gauss_jitter(10, sigma_ms=100, groups_per_sigma=5, gauss=_fixed_draw(-3)) == 280
    )


@PROPERTY
@given(
    delay=whole_delays_ms,
    step=st.integers(min_value=1, max_value=500),
    groups=st.integers(min_value=1, max_value=20),
    offset=st.floats(min_value=-10, max_value=10),
)
def test_gauss_jitter_falls_on_the_grid_and_is_not_negative(
    delay: int, step: int, groups: int, offset: float
) -> None:
    sigma = step * groups  # so that sigma / groups is a whole number of ms
    result = gauss_jitter(
        delay, sigma_ms=sigma, groups_per_sigma=groups, gauss=_fixed_draw(offset)
    )
    assert isinstance(result, int)
    assert result >= 0
    assert result % step == 0
    drawn = abs(delay + offset * sigma)
    assert abs(result - drawn) <= step / 2 + 1


@PROPERTY
@given(
    delay=delays_ms.filter(lambda d: d < 1e12),
    sigma=st.floats(min_value=0.01, max_value=10_000),
    groups=st.integers(min_value=1, max_value=50),
    offset=st.floats(min_value=-10, max_value=10),
)
def test_gauss_jitter_with_fractional_steps_is_near_the_grid(
    delay: float, sigma: float, groups: int, offset: float
) -> None:
    step = sigma / groups
    result = gauss_jitter(
        delay, sigma_ms=sigma, groups_per_sigma=groups, gauss=_fixed_draw(offset)
    )
    assert result >= 0
    nearest_point = round(result / step) * step
    assert abs(result - nearest_point) < 1 + result * 1e-12


def test_gauss_jitter_draws_from_random_gauss_by_default() -> None:
    results = [gauss_jitter(5000, sigma_ms=100, groups_per_sigma=5) for _ in range(200)]
    assert all(result % 20 == 0 and result >= 0 for result in results)
    assert len(set(results)) > 1


@pytest.mark.parametrize(
    ("sigma", "groups", "error", "text"),
    [
        (-1, 5, ValueError, "random_sigma must be 0 or more milliseconds, got -1"),
        (math.nan, 5, ValueError, "random_sigma must be 0 or more milliseconds"),
        (math.inf, 5, ValueError, "random_sigma must be a finite number"),
        ("100", 5, TypeError, "random_sigma must be a number of milliseconds"),
        (True, 5, TypeError, "got True"),
        (100, 0, ValueError, "random_groups_per_sigma must be 1 or more, got 0"),
        (100, -2, ValueError, "set random_sigma = 0 to turn jitter off instead"),
        (100, math.nan, ValueError, "random_groups_per_sigma must be 1 or more"),
        (100, True, ValueError, "got True"),
        (100, "5", ValueError, "got '5'"),
    ],
)
def test_gauss_jitter_rejects_bad_settings(
    sigma: Any, groups: Any, error: type[Exception], text: str
) -> None:
    with pytest.raises(error) as caught:
        gauss_jitter(1000, sigma_ms=sigma, groups_per_sigma=groups)
    assert text in str(caught.value)


def test_gauss_jitter_handles_delays_past_the_broker_limit() -> None:
    # capping is Backoff's job; the jitter itself stays exact on big delays
    result = gauss_jitter(1e15, sigma_ms=100, groups_per_sigma=5, gauss=_fixed_draw(1))
    assert result == 10**15 + 100
