"""The ack and failure table (aio_backoff.core._outcome): one action per outcome."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aio_backoff import (
    ACTIONS,
    FailurePolicy,
    Outcome,
    Reply,
    Settle,
    TransientTries,
    decide,
)
from tests.core.strategies import PROPERTY

pytestmark = pytest.mark.core


def test_every_outcome_has_an_action() -> None:
    assert set(ACTIONS) == set(Outcome)


@pytest.mark.parametrize(
    ("outcome", "settle", "reply"),
    [
        (Outcome.SUCCEEDED, Settle.ACK, Reply.RESULT),
        (Outcome.RETRY_PLACED, Settle.ACK, Reply.NONE),
        (Outcome.NOT_PLACED_TRANSIENT, Settle.REQUEUE_LATER, Reply.NONE),
        (Outcome.NOT_PLACED_PERMANENT, Settle.DEAD_LETTER_OR_PARK, Reply.ERROR),
        (Outcome.EXPIRED, Settle.FINAL_ACTION, Reply.ERROR),
        (Outcome.HANDLER_ERROR, Settle.HANDLER_RULE, Reply.ERROR),
        (Outcome.UNDECODABLE, Settle.DEAD_LETTER_OR_PARK, Reply.ERROR),
        (Outcome.PLANNING_ERROR, Settle.DEAD_LETTER_OR_PARK, Reply.ERROR),
        (Outcome.FINAL_ACTION_FAILED, Settle.REQUEUE_LATER, Reply.NONE),
        (Outcome.CANCELLED, Settle.REQUEUE_NOW, Reply.NONE),
    ],
)
def test_the_table(outcome: Outcome, settle: Settle, reply: Reply) -> None:
    action = decide(outcome)
    assert (action.settle, action.reply) == (settle, reply)


def test_no_outcome_drops_a_message() -> None:
    # every settle keeps the message: acked only once it is handled or its copy
    # is confirmed, otherwise requeued, dead-lettered or parked
    assert {
        ACTIONS[o].settle
        for o in Outcome
        if o not in {Outcome.SUCCEEDED, Outcome.RETRY_PLACED}
    }.isdisjoint({Settle.ACK})


def test_permanent_failures_are_errors() -> None:
    for outcome in (
        Outcome.NOT_PLACED_PERMANENT,
        Outcome.UNDECODABLE,
        Outcome.PLANNING_ERROR,
    ):
        assert decide(outcome).level == logging.ERROR


def test_transient_failures_give_up_at_the_limit() -> None:
    policy = FailurePolicy(max_transient_tries=3)
    tries = [
        decide(Outcome.NOT_PLACED_TRANSIENT, transient_tries=n, policy=policy).settle
        for n in (1, 2, 3, 4)
    ]
    assert tries == [
        Settle.REQUEUE_LATER,
        Settle.REQUEUE_LATER,
        Settle.DEAD_LETTER_OR_PARK,
        Settle.DEAD_LETTER_OR_PARK,
    ]
    endless = FailurePolicy(max_transient_tries=0)
    assert (
        decide(
            Outcome.NOT_PLACED_TRANSIENT, transient_tries=10**6, policy=endless
        ).settle
        is Settle.REQUEUE_LATER
    )


@PROPERTY
@given(
    first=st.floats(min_value=0, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    tries=st.integers(min_value=-5, max_value=10**9),
)
def test_pause_grows_and_is_bounded(first: float, extra: float, tries: int) -> None:
    policy = FailurePolicy(first_pause_s=first, max_pause_s=first + extra)
    pause = policy.pause(tries)
    assert first <= pause <= first + extra
    assert policy.pause(tries + 1) >= pause


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_transient_tries": -1},
        {"max_transient_tries": 2.0},
        {"max_transient_tries": True},
        {"first_pause_s": float("nan")},
        {"max_pause_s": float("inf")},
        {"first_pause_s": -1},
        {"first_pause_s": 5, "max_pause_s": 1},
    ],
)
def test_bad_failure_policy_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="FailurePolicy"):
        FailurePolicy(**kwargs)  # type: ignore[arg-type]


def test_transient_tries_are_counted_and_bounded() -> None:
    tries = TransientTries(max_keys=2)
    assert [tries.failed("a"), tries.failed("a"), tries.failed("b")] == [1, 2, 1]
    tries.failed("c")  # "a" is the oldest: forgotten
    assert (tries.peek("a"), tries.peek("b"), tries.peek("c"), len(tries)) == (
        0,
        1,
        1,
        2,
    )
    tries.clear("b")
    assert tries.peek("b") == 0
    with pytest.raises(ValueError, match="max_keys"):
        TransientTries(max_keys=0)
