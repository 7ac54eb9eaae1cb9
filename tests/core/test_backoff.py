"""``Backoff``: schedule, jitter, limit, per-raise override and the Expired error."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import (
    MAX_DELAY_MS,
    Backoff,
    BackoffConfigError,
    as_backoff,
    backoff_class,
    exponential,
    fixed,
)
from aio_backoff.core import _backoff
from tests.core.strategies import (
    PROPERTY,
    finite_delays_ms,
    indexes,
    small_indexes,
    whole_delays_ms,
)

pytestmark = pytest.mark.core

DEFAULT_SCHEDULE = (1000, 2000, 3000, 5000, 8000, 13000, 21000, 34000, 55000)


def no_jitter(**settings: Any) -> type[Backoff]:
    return backoff_class(random_sigma=0, **settings)


def drawing(offset: float, **settings: Any) -> type[Backoff]:
    """A Backoff whose jitter draw is ``mu + offset * sigma``, deterministic."""

    def _gauss(cls: type[Backoff], mu: float, sigma: float) -> float:
        return mu + offset * sigma

    base = backoff_class(**settings)
    return type("Drawing", (base,), {"_gauss": classmethod(_gauss)})


@dataclass
class Message:
    headers: Mapping[str, Any] | None


# -- defaults ------------------------------------------------------------------


def test_defaults_are_nameko_amqp_retrys() -> None:
    assert Backoff.schedule == DEFAULT_SCHEDULE
    assert Backoff.limit == 20
    assert Backoff.random_sigma == 100
    assert Backoff.random_groups_per_sigma == 5
    assert Backoff.effective_limit() == 20


def test_default_schedule_items_then_the_last_repeats() -> None:
    items = [Backoff.get_next_schedule_item(i) for i in range(12)]
    assert items == [*DEFAULT_SCHEDULE, 55000, 55000, 55000]
    assert Backoff.get_next_schedule_item(10**18) == 55000


def test_default_max_delay_sums_twenty_retries() -> None:
    assert Backoff().max_delay == sum(DEFAULT_SCHEDULE) + 11 * 55000 == 747_000


def test_default_jitter_stays_on_the_20ms_grid_near_the_schedule() -> None:
    backoff = Backoff()
    for index in range(12):
        delay = backoff.compute_next(index)
        scheduled = Backoff.get_next_schedule_item(index)
        assert delay % 20 == 0
        assert abs(delay - scheduled) <= 1000  # ten sigma


# -- the maths as properties ---------------------------------------------------


@PROPERTY
@given(items=st.lists(whole_delays_ms, min_size=1, max_size=10), index=small_indexes)
def test_without_jitter_the_delay_is_the_item_made_positive(
    items: list[int], index: int
) -> None:
    backoff = no_jitter(schedule=tuple(items), limit=0)()
    expected = min(abs(items[min(index, len(items) - 1)]), MAX_DELAY_MS)
    assert backoff.compute_next(index) == expected


@PROPERTY
@given(
    items=st.lists(finite_delays_ms, min_size=1, max_size=10),
    sigma=st.sampled_from([0, 1, 100, 10_000]),
    offset=st.floats(min_value=-20, max_value=20),
    index=indexes,
)
def test_delays_are_never_negative_nor_past_max_delay(
    items: list[float], sigma: int, offset: float, index: int
) -> None:
    cls = drawing(offset, schedule=tuple(items), limit=0, random_sigma=sigma)
    delay = cls().compute_next(index)
    assert isinstance(delay, int)
    assert 0 <= delay <= MAX_DELAY_MS


@PROPERTY
@given(
    scheduled=st.integers(min_value=-(10**9), max_value=10**9),
    step=st.integers(min_value=1, max_value=200),
    groups=st.integers(min_value=1, max_value=10),
    offset=st.floats(min_value=-10, max_value=10),
)
def test_jittered_delays_fall_on_the_sigma_groups_grid(
    scheduled: int, step: int, groups: int, offset: float
) -> None:
    cls = drawing(
        offset,
        schedule=(scheduled,),
        random_sigma=step * groups,
        random_groups_per_sigma=groups,
    )
    delay = cls().compute_next(0)
    assert delay >= 0
    assert delay % step == 0
    assert abs(delay - abs(scheduled + offset * step * groups)) <= step / 2 + 1


@PROPERTY
@given(limit=st.integers(min_value=1, max_value=60), retries=small_indexes)
def test_expired_exactly_when_retries_reach_the_limit(limit: int, retries: int) -> None:
    backoff = no_jitter(schedule=(10,), limit=limit)()
    if retries >= limit:
        with pytest.raises(Backoff.Expired):
            backoff.compute_next(retries)
    else:
        assert backoff.compute_next(retries) == 10


@PROPERTY
@given(limit=st.sampled_from([None, 0]), retries=indexes)
def test_no_limit_never_expires(limit: int | None, retries: int) -> None:
    cls = cast(
        "type[Backoff]",
        type("Forever", (no_jitter(schedule=(10, 20)),), {"limit": limit}),
    )
    assert cls.effective_limit() is None
    assert cls().compute_next(retries) in (10, 20)
    assert cls().max_delay == math.inf


@pytest.mark.parametrize("index", [10**6, 10**18, 10**300])
@pytest.mark.parametrize("sigma", [0, 100])
def test_callable_schedules_do_not_overflow_at_huge_indexes(
    index: int, sigma: int
) -> None:
    uncapped = backoff_class(schedule=exponential(100), limit=0, random_sigma=sigma)
    capped = backoff_class(
        schedule=exponential(100, cap_ms=60_000), limit=0, random_sigma=sigma
    )
    assert 0 <= uncapped().compute_next(index) <= MAX_DELAY_MS
    assert abs(capped().compute_next(index) - 60_000) <= 100 * 10
    if not sigma:
        assert uncapped().compute_next(index) == MAX_DELAY_MS
        assert capped().compute_next(index) == 60_000


@pytest.mark.parametrize("value", [math.inf, -math.inf, 1e300, -1e300, 2**64])
def test_huge_scheduled_delays_are_capped_at_max_delay(value: float) -> None:
    class Huge(Backoff):
        random_sigma = 0

        @classmethod
        def get_next_schedule_item(cls, index: int) -> float:
            return value

    assert Huge().compute_next(3) == MAX_DELAY_MS
    if math.isfinite(value):  # an infinite item is refused, a callable's inf is not
        assert drawing(5, schedule=(value,))().compute_next(0) <= MAX_DELAY_MS


def test_negative_schedule_items_are_made_positive() -> None:
    assert no_jitter(schedule=(-1000, -2000))().compute_next(5) == 2000
    jittered = drawing(0.3, schedule=(-1000,))().compute_next(0)
    # gauss(-1000, 100) drew -970 -> nearest 20 ms -> -960 -> made positive
    assert jittered == 960


def test_negative_items_count_positively_in_max_delay() -> None:
    assert backoff_class(schedule=(-1000, 2000), limit=3)().max_delay == 5000


# -- dynamic schedules ---------------------------------------------------------


def test_get_next_schedule_item_can_be_overridden() -> None:
    class Squares(Backoff):
        random_sigma = 0
        limit = 5

        @classmethod
        def get_next_schedule_item(cls, index: int) -> float:
            return (index + 1) ** 2 * 10

    backoff = Squares()
    assert [backoff.compute_next(i) for i in range(5)] == [10, 40, 90, 160, 250]
    assert backoff.max_delay == 550


def test_a_schedule_helper_as_the_schedule_attribute() -> None:
    class Exponential(Backoff):
        schedule = exponential(100, cap_ms=1000)
        random_sigma = 0

    backoff = Exponential()
    assert [backoff.compute_next(i) for i in range(6)] == [
        100,
        200,
        400,
        800,
        1000,
        1000,
    ]


def test_a_schedule_helper_as_get_next_schedule_item() -> None:
    class Fixed(Backoff):
        get_next_schedule_item = staticmethod(fixed(250))  # type: ignore[assignment]
        random_sigma = 0

    assert Fixed().compute_next(7) == 250


def test_fractional_scheduled_delays_become_whole_ms() -> None:
    assert no_jitter(schedule=(1500.9,))().compute_next(0) == 1500


# -- str, retry_number, next_delay_ms -------------------------------------------


def test_str_before_and_after_computing() -> None:
    backoff = no_jitter(schedule=(1000, 2000))("some detail")
    assert str(backoff) == "Backoff(uninitialised)"
    assert backoff.retry_number is None
    assert backoff.next_delay_ms is None

    assert backoff.compute_next(1) == 2000
    assert str(backoff) == "Backoff(retry #2 in 2000ms)"
    assert backoff.retry_number == 2
    assert backoff.next_delay_ms == 2000
    assert backoff.args == ("some detail",)


def test_expired_backoff_plans_no_delay() -> None:
    backoff = no_jitter(limit=1)()
    with pytest.raises(Backoff.Expired):
        backoff.compute_next(1)
    assert backoff.next_delay_ms is None
    assert backoff.retry_number == 2


# -- Expired -------------------------------------------------------------------


def test_expired_message_and_attributes() -> None:
    backoff = no_jitter(schedule=(1000, 2000, 3000), limit=3)()
    with pytest.raises(Backoff.Expired) as caught:
        backoff.compute_next(3)
    error = caught.value
    assert str(error) == "Backoff aborted after '3' retries (~6 seconds)"
    assert error.retries == 3
    assert error.limit == 3
    assert error.max_delay_ms == 6000
    assert error.__cause__ is backoff
    assert not isinstance(error, Backoff)


def test_expired_counts_the_limit_when_more_retries_were_made() -> None:
    backoff = no_jitter(schedule=(500,), limit=4)()
    with pytest.raises(Backoff.Expired) as caught:
        backoff.compute_next(9)
    assert str(caught.value) == "Backoff aborted after '4' retries (~2 seconds)"
    assert caught.value.retries == 9
    assert caught.value.limit == 4


def test_expired_built_directly_without_a_limit() -> None:
    error = no_jitter(limit=0)().expired(7)
    assert str(error) == "Backoff aborted after '7' retries (~inf seconds)"
    assert (error.retries, error.limit, error.max_delay_ms) == (7, 7, math.inf)


def test_expired_defaults_before_it_is_filled_in() -> None:
    error = Backoff.Expired("x")
    assert (error.retries, error.limit, error.max_delay_ms) == (0, 0, 0.0)


def test_subclasses_share_one_expired_class() -> None:
    cls = backoff_class(limit=1)
    with pytest.raises(Backoff.Expired):
        cls().compute_next(1)
    assert cls.Expired is Backoff.Expired


def test_expired_is_chained_from_the_backoff_and_its_cause() -> None:
    original = ConnectionError("upstream down")
    backoff = as_backoff(original, (ConnectionError,), no_jitter(limit=2))
    assert backoff is not None
    with pytest.raises(Backoff.Expired) as caught:
        backoff.next(Message({"backoff-retries": 2}))
    assert caught.value.__cause__ is backoff
    assert backoff.__cause__ is original


def test_expired_chain_when_raised_from_a_handler() -> None:
    def handler() -> None:
        try:
            raise KeyError("not yet")
        except KeyError as error:
            raise backoff_class(limit=1)() from error

    with pytest.raises(Backoff) as raised:
        handler()
    backoff = raised.value
    with pytest.raises(Backoff.Expired) as caught:
        backoff.compute_next(1)
    assert caught.value.__cause__ is backoff
    assert isinstance(backoff.__cause__, KeyError)


# -- per-raise delay_ms ----------------------------------------------------------


def test_delay_ms_replaces_the_schedule_without_jitter() -> None:
    class NoDraw(Backoff):
        @classmethod
        def _gauss(cls, mu: float, sigma: float) -> float:
            raise AssertionError("a per-raise delay gets no jitter")

    backoff = NoDraw(delay_ms=1234)
    assert backoff.delay_ms == 1234
    assert backoff.compute_next(4) == 1234
    assert str(backoff) == "Backoff(retry #5 in 1234ms)"


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, 0),
        (1500.9, 1500),
        (MAX_DELAY_MS + 1, MAX_DELAY_MS),
        (math.inf, MAX_DELAY_MS),
    ],
)
def test_delay_ms_is_whole_ms_within_max_delay(delay: float, expected: int) -> None:
    assert Backoff(delay_ms=delay).compute_next(0) == expected


@PROPERTY
@given(delay=st.floats(min_value=0), retries=st.integers(0, 19))
def test_delay_ms_is_always_a_valid_delay(delay: float, retries: int) -> None:
    result = Backoff(delay_ms=delay).compute_next(retries)
    assert result == min(int(min(delay, MAX_DELAY_MS)), MAX_DELAY_MS)


def test_delay_ms_still_honours_the_limit() -> None:
    with pytest.raises(Backoff.Expired):
        backoff_class(limit=2)(delay_ms=10).compute_next(2)


@pytest.mark.parametrize(
    ("delay", "text"),
    [
        ("10", "Backoff(delay_ms=...) must be 0 or more ms, got '10'"),
        (True, "got True"),
        (-1, "Backoff(delay_ms=...) must be 0 or more ms, got -1"),
        (math.nan, "must be 0 or more ms, got nan; raise it with e.g. delay_ms=1500"),
    ],
)
def test_a_bad_delay_ms_is_a_planning_error(delay: Any, text: str) -> None:
    """Raising it works (no error out of the handler's ``raise``); planning fails."""
    backoff = Backoff(delay_ms=delay)
    with pytest.raises(BackoffConfigError) as caught:
        backoff.compute_next(0)
    assert text in str(caught.value)


# -- next(message) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "retries"),
    [
        (None, 0),
        ({}, 0),
        ({"backoff-retries": 2}, 2),
        ({"x-death": [{"exchange": "backoff", "count": 3}]}, 3),
    ],
)
def test_next_counts_retries_from_the_headers(
    headers: Mapping[str, Any] | None, retries: int
) -> None:
    backoff = no_jitter(schedule=(100, 200, 300, 400))()
    assert backoff.next(Message(headers)) == (retries + 1) * 100
    assert backoff.retry_number == retries + 1


def test_next_reads_legacy_counts_for_its_own_exchange() -> None:
    backoff = no_jitter(schedule=(100, 200, 300))()
    headers = {"x-death": [{"exchange": "retries", "count": 2}]}
    assert backoff.next(Message(headers), "retries") == 300
    assert backoff.next(Message(headers)) == 100


# -- backoff_class and patching ----------------------------------------------------


def test_backoff_class_sets_what_it_is_given() -> None:
    cls = backoff_class(
        schedule=(5, 6),
        limit=7,
        random_sigma=8,
        random_groups_per_sigma=2,
        name="OrdersBackoff",
    )
    assert issubclass(cls, Backoff)
    assert cls.__name__ == "OrdersBackoff"
    assert cls.__module__ == Backoff.__module__
    assert (cls.schedule, cls.limit, cls.random_sigma) == ((5, 6), 7, 8)
    assert cls.random_groups_per_sigma == 2


def test_backoff_class_keeps_the_base_settings_it_is_not_given() -> None:
    base = backoff_class(schedule=(50,), limit=3, random_sigma=0, name="Base")
    cls = backoff_class(limit=9, base=base)
    assert issubclass(cls, base)
    assert (cls.schedule, cls.limit, cls.random_sigma) == ((50,), 9, 0)
    assert cls().compute_next(8) == 50


def test_backoff_class_reads_none_as_keep_the_base_and_0_as_forever() -> None:
    """``None`` means "not given" to ``backoff_class``, so it cannot ask for a
    limit of None: ``limit=0`` does (retry forever), and ``limit=False`` is refused
    like in a class statement (BAD_SETTINGS)."""
    base = backoff_class(schedule=(50,), limit=3, random_sigma=0, name="Base")
    kept = backoff_class(limit=None, schedule=None, random_sigma=None, base=base)
    assert (kept.schedule, kept.limit, kept.random_sigma) == ((50,), 3, 0)
    with pytest.raises(Backoff.Expired):
        kept().compute_next(3)
    forever = backoff_class(limit=0, base=base)
    assert forever.limit == 0
    assert forever().compute_next(10**6) == 50


def test_backoff_class_captures_defaults_at_creation() -> None:
    with patch.object(Backoff, "limit", 3), patch.object(Backoff, "schedule", (70,)):
        captured = backoff_class(random_sigma=0)
    assert captured.limit == 3
    assert captured.schedule == (70,)
    assert Backoff.limit == 20
    with pytest.raises(Backoff.Expired):
        captured().compute_next(3)


def test_backoff_class_accepts_a_callable_schedule() -> None:
    cls = backoff_class(schedule=exponential(10), random_sigma=0)
    assert cls().compute_next(3) == 80
    again = backoff_class(base=cls, limit=4)
    assert again().compute_next(2) == 40


def test_patching_class_attributes_changes_behaviour() -> None:
    backoff = Backoff()
    with (
        patch.object(Backoff, "limit", 2),
        patch.object(Backoff, "schedule", (30, 40)),
        patch.object(Backoff, "random_sigma", 0),
    ):
        assert backoff.compute_next(1) == 40
        with pytest.raises(Backoff.Expired, match="after '2' retries"):
            backoff.compute_next(2)
    assert backoff.compute_next(2) % 20 == 0  # defaults again: 3000 ms, jittered


def test_patching_limit_to_none_retries_forever() -> None:
    with patch.object(Backoff, "limit", None), patch.object(Backoff, "random_sigma", 0):
        assert Backoff().compute_next(10**9) == 55000


# -- bad settings ----------------------------------------------------------------


BAD_SETTINGS = [
    ({"schedule": ()}, "Bad.schedule needs at least one delay, got an empty sequence"),
    ({"schedule": ()}, "write e.g. schedule = (1000,)"),
    ({"schedule": []}, "got an empty sequence []"),
    ({"schedule": "1000"}, "Bad.schedule must be a sequence of ms"),
    ({"schedule": b"\x01"}, "or a callable (index) -> ms"),
    ({"schedule": 1000}, "write e.g. schedule = (1000, 2000)"),
    ({"schedule": (100, "x")}, "Bad.schedule item 1 must be a finite number"),
    ({"schedule": (True,)}, "schedule item 0"),
    ({"schedule": (math.nan,)}, "got nan"),
    ({"schedule": (10, math.inf)}, "item 1 must be a finite number of milliseconds"),
    ({"limit": -1}, "Bad.limit must be a whole number of retries"),
    ({"limit": -1}, "write limit = None (or 0) to retry forever"),
    ({"limit": 3.0}, "got 3.0; write limit = 3"),
    ({"limit": True}, "got True; write limit = 1"),
    ({"limit": False}, "got False; write limit = None"),
    ({"limit": 2.5}, "got 2.5"),
    ({"limit": "3"}, "got '3'; write limit = 3"),
    ({"random_groups_per_sigma": 0}, "must be 1 or more, got 0"),
    ({"random_groups_per_sigma": True}, "got True"),
    ({"random_sigma": -5}, "random_sigma must be 0 or more"),
    ({"random_sigma": math.nan}, "random_sigma must be 0 or more"),
    ({"random_sigma": True}, "write e.g. random_sigma = 100"),
]


@pytest.mark.parametrize(("settings", "text"), BAD_SETTINGS)
def test_bad_settings_are_refused_where_the_class_is_defined(
    settings: dict[str, Any], text: str
) -> None:
    with pytest.raises(BackoffConfigError) as caught:
        type("Bad", (Backoff,), settings)
    assert text in str(caught.value)


@pytest.mark.parametrize(("settings", "text"), BAD_SETTINGS)
def test_bad_settings_are_refused_by_backoff_class(
    settings: dict[str, Any], text: str
) -> None:
    with pytest.raises(BackoffConfigError) as caught:
        backoff_class(name="Bad", **settings)
    assert text in str(caught.value)


def test_a_class_statement_with_a_bad_setting_is_refused() -> None:
    with pytest.raises(BackoffConfigError, match=r"Bad\.limit .* write limit = 3"):

        class Bad(Backoff):
            limit = 3.0  # type: ignore[assignment]


@pytest.mark.parametrize(("settings", "text"), BAD_SETTINGS)
def test_bad_settings_patched_in_later_are_planning_errors(
    settings: dict[str, Any], text: str
) -> None:
    """``patch.object`` keeps working; an invalid value fails the plan, clearly."""
    cls = backoff_class(name="Bad")
    with patch.multiple(cls, **settings), pytest.raises(BackoffConfigError) as caught:
        cls().compute_next(1)
    assert text in str(caught.value)


def test_config_errors_are_value_and_type_errors() -> None:
    assert issubclass(BackoffConfigError, ValueError)
    assert issubclass(BackoffConfigError, TypeError)


def test_a_limit_of_an_int_subclass_is_kept() -> None:
    class Retries(enum.IntEnum):
        FEW = 3

    cls = backoff_class(limit=Retries.FEW, random_sigma=0, name="Few")
    assert cls.effective_limit() is Retries.FEW
    assert cls().compute_next(2) == 3000
    with pytest.raises(Backoff.Expired):
        cls().compute_next(3)


def test_a_tuple_schedule_reads_like_the_same_list() -> None:
    items = [100, 250.5, -300]
    as_tuple = backoff_class(schedule=tuple(items), random_sigma=0, name="T")
    as_list = backoff_class(schedule=list(items), random_sigma=0, name="L")
    for index in (0, 1, 2, 3, 10**9):
        item = as_tuple.get_next_schedule_item(index)
        assert item == as_list.get_next_schedule_item(index)
        assert type(item) is type(as_list.get_next_schedule_item(index))
    with pytest.raises(ValueError, match="schedule index must be 0 or more"):
        as_tuple.get_next_schedule_item(-1)


def test_a_bad_tuple_schedule_fails_on_every_retry() -> None:
    """A bad tuple is never taken as checked: each plan names the bad item."""
    cls = backoff_class(schedule=(100, 200), random_sigma=0, name="Bad")
    cls.schedule = (100, 200, "x")  # type: ignore[assignment]
    for _ in range(2):
        with pytest.raises(BackoffConfigError, match="schedule item 2 must be a"):
            cls().compute_next(0)


def test_checked_tuple_schedules_are_kept_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_backoff, "_CHECKED_TUPLES", {})
    monkeypatch.setattr(_backoff, "_CHECKED_TUPLES_MAX", 3)
    schedules = [(10 * n, 20 * n) for n in range(1, 6)]
    for n, schedule in enumerate(schedules, start=1):
        cls = backoff_class(schedule=schedule, random_sigma=0, name=f"S{n}")
        assert cls().compute_next(0) == 10 * n
        assert cls().compute_next(5) == 20 * n  # the checked schedule is reused
        assert len(_backoff._CHECKED_TUPLES) <= 3
    assert list(_backoff._CHECKED_TUPLES.values())[-1][0] is schedules[-1]


@pytest.mark.parametrize(
    ("returned", "error", "text"),
    [
        ("100", TypeError, "Bad.get_next_schedule_item(2) must return a number"),
        (True, TypeError, "of ms, got True"),
        (None, TypeError, "got None"),
        (math.nan, ValueError, "Bad.get_next_schedule_item(2) returned NaN"),
    ],
)
def test_bad_schedule_results_give_clear_errors(
    returned: Any, error: type[Exception], text: str
) -> None:
    cls = type("Bad", (Backoff,), {"schedule": staticmethod(lambda _: returned)})
    with pytest.raises(error) as caught:
        cls().compute_next(2)
    assert text in str(caught.value)


def test_negative_retries_are_rejected() -> None:
    with pytest.raises(ValueError, match="retries must be 0 or more, got -1"):
        Backoff().compute_next(-1)


# -- as_backoff --------------------------------------------------------------------


def test_as_backoff_passes_a_backoff_through() -> None:
    raised = Backoff(delay_ms=5)
    assert as_backoff(raised, (ValueError,), backoff_class(limit=1)) is raised
    assert as_backoff(raised, (), Backoff) is raised


def test_as_backoff_converts_listed_errors_chained() -> None:
    cls = backoff_class(limit=4)
    original = TimeoutError("slow")
    converted = as_backoff(original, (ConnectionError, OSError), cls)
    assert converted is not None
    assert type(converted) is cls
    assert converted.__cause__ is original


@pytest.mark.parametrize("retry_for", [(), (KeyError,)])
def test_as_backoff_leaves_other_errors_alone(
    retry_for: tuple[type[BaseException], ...],
) -> None:
    assert as_backoff(ValueError("bad"), retry_for, Backoff) is None


def test_max_delay_of_a_huge_limit_is_computed_in_closed_form() -> None:
    class Forever(Backoff):
        schedule = (1000, -2000, 3000)
        limit = 10**12

    # 1000 + 2000 + (10**12 - 2) * 3000, without looping 10**12 times
    assert Forever().max_delay == 3000 + (10**12 - 2) * 3000


def test_max_delay_with_an_overridden_schedule_item_uses_the_override() -> None:
    class Dynamic(Backoff):
        limit = 4

        @classmethod
        def get_next_schedule_item(cls, index: int) -> float:
            return 10 * (index + 1)

    assert Dynamic().max_delay == 10 + 20 + 30 + 40


def test_str_of_an_expired_backoff_says_how_many_retries_it_had() -> None:
    class Three(Backoff):
        limit = 3

    backoff = Three()
    with pytest.raises(Backoff.Expired):
        backoff.compute_next(3)
    assert str(backoff) == "Backoff(expired after 3 retries)"


def test_public_classes_name_the_public_module() -> None:
    assert f"{Backoff.__module__}.{Backoff.Expired.__qualname__}" == (
        "aio_backoff.Backoff.Expired"
    )


def test_as_backoff_does_not_retry_an_upstream_expiry_unless_asked() -> None:
    """Finding 6: with ``retry_for=(Exception,)`` an expiry from upstream (ours, the
    nameko wire's ``RemoteExpired``, or nameko's ``RemoteError`` with ``exc_type``
    ``"Expired"``) is not retried again; naming ``Backoff.Expired`` asks for it."""
    from aio_backoff.core.nameko_wire import RemoteExpired  # noqa: PLC0415

    class NamekoRemoteError(Exception):  # nameko.exceptions.RemoteError's shape
        def __init__(self, exc_type: str, value: str) -> None:
            super().__init__(f"{exc_type} {value}")
            self.exc_type = exc_type

    upstream = [
        Backoff.Expired("Backoff aborted after '2' retries (~0 seconds)"),
        RemoteExpired("Expired", "Backoff aborted after '2' retries (~0 seconds)"),
        NamekoRemoteError("Expired", "Backoff aborted after '2' retries"),
    ]
    for error in upstream:
        assert as_backoff(error, (Exception,), Backoff) is None, error
        converted = as_backoff(error, (Exception, Backoff.Expired), Backoff)
        assert isinstance(converted, Backoff), error
        assert converted.__cause__ is error
    # another remote error is still retried
    other = NamekoRemoteError("ConnectionError", "down")
    assert isinstance(as_backoff(other, (Exception,), Backoff), Backoff)
