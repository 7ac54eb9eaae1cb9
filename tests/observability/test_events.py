"""The event vocabulary itself: no broker."""

from __future__ import annotations

import logging

import pytest

from aio_backoff import DUE_HEADER, Backoff, Hooks, backoff_class, plan_retry
from aio_backoff.core import delayed_headers
from aio_backoff.events import CameBack, Scheduled, came_back, emit

pytestmark = [pytest.mark.core, pytest.mark.timeout(10)]


def test_came_back_reads_attempt_delay_and_lateness() -> None:
    headers = {"backoff-retries": 2, "backoff": 300, DUE_HEADER: 1_000}
    event = came_back(headers, queue="q", message_id="m", now_ms=1_250)
    assert event == CameBack("q", "m", attempt=2, delay_ms=300, lateness_ms=250)
    older = came_back({"backoff-retries": 1}, queue="q", message_id=None, now_ms=5)
    assert older is not None
    assert older.lateness_ms is None
    assert came_back({"a": 1}, queue="q", message_id="m") is None
    assert came_back(None, queue="q", message_id="m") is None


def test_a_copy_is_due_at_plan_time_plus_its_delay() -> None:
    policy = backoff_class(schedule=(700,), limit=3, random_sigma=0)
    plan = plan_retry(policy(), {DUE_HEADER: 1}, target_queue="q", now_ms=10_000)
    assert plan.headers[DUE_HEADER] == 10_700
    assert plan.cause == "CustomBackoff"  # the name backoff_class gives it
    # without a due time, an earlier copy's is not carried on
    assert DUE_HEADER not in delayed_headers({DUE_HEADER: 5}, delay_ms=1, retries=1)


def test_the_cause_of_a_converted_exception_names_the_exception() -> None:
    try:
        try:
            raise TimeoutError
        except TimeoutError as error:
            raise Backoff from error
    except Backoff as backoff:
        plan = plan_retry(backoff, None, target_queue="q")
    assert plan.cause == "TimeoutError"


def test_emit_logs_and_swallows_what_a_hook_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[object] = []

    def broken(event: object) -> None:
        raise ValueError(event)

    event = Scheduled("q", "m", 1, 3, 100, "Backoff")
    hooks = Hooks(scheduled=[broken, seen.append])
    with caplog.at_level(logging.ERROR, logger="aio_backoff.hooks"):
        emit(hooks.scheduled, event)
    assert seen == [event]
    [line] = caplog.records
    assert "failed" in line.getMessage()
    assert line.exc_info is not None
