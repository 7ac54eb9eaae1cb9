"""One name per concept: ``delay_exchange`` and ``grace_ms``. Each older name still
works, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest

import aio_backoff
import aio_backoff.core
from aio_backoff import (
    Backoff,
    DelayQueue,
    delay_queue,
    legacy_retries,
    plan_retry,
    retries_done,
)
from aio_backoff.core.nameko_wire import rpc_method_id

pytestmark = pytest.mark.core

# two retries through the exchange "retries", as nameko-amqp-retry counts them
LEGACY = {"x-death": [{"exchange": "retries", "count": 2, "queue": "q"}]}


class Steady(Backoff):
    schedule = (100,)
    random_sigma = 0


def test_plan_retry_exchange_keyword_warns_and_still_works() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"plan_retry\(delay_exchange=\.\.\.\)"
    ) as warned:
        plan = plan_retry(Steady(), LEGACY, target_queue="q", exchange="retries")
    assert warned[0].filename == __file__  # the warning points at the caller
    assert plan.delay_queue.delay_exchange == "retries"
    assert plan.retry_number == 3  # the x-death of "retries" was counted


def test_retries_done_exchange_keyword_warns_and_still_works() -> None:
    with pytest.warns(DeprecationWarning, match=r"retries_done\(delay_exchange="):
        assert retries_done(LEGACY, exchange="retries") == 2
    assert retries_done(LEGACY, delay_exchange="retries") == 2
    assert retries_done(LEGACY, "retries") == 2
    assert retries_done(LEGACY) == 0


def test_legacy_retries_exchange_keyword_warns_and_still_works() -> None:
    with pytest.warns(DeprecationWarning, match=r"legacy_retries\(delay_exchange="):
        assert legacy_retries(LEGACY, exchange="retries") == 2
    assert legacy_retries(LEGACY, delay_exchange="retries") == 2
    assert legacy_retries(LEGACY, "retries") == 2


def test_delay_queue_exchange_keyword_warns_and_still_works() -> None:
    with pytest.warns(DeprecationWarning, match=r"delay_queue\(delay_exchange="):
        queue = delay_queue(100, exchange="retries", grace_ms=900)
    assert queue == DelayQueue(100, delay_exchange="retries", grace_ms=900)


def test_delay_queue_class_exchange_keyword_warns_and_still_works() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"DelayQueue\(delay_exchange="
    ) as warned:
        queue = DelayQueue(100, exchange="retries")
    assert warned[0].filename == __file__
    assert queue.delay_exchange == "retries"
    assert queue == DelayQueue(100, "retries")


def test_delay_queue_exchange_attribute_warns_and_still_works() -> None:
    queue = DelayQueue(100, delay_exchange="retries")
    with pytest.warns(
        DeprecationWarning, match=r"DelayQueue\.delay_exchange"
    ) as warned:
        assert queue.exchange == "retries"
    assert warned[0].filename == __file__


def test_rpc_method_id_exchange_keyword_warns_and_still_works() -> None:
    headers = {**LEGACY, "nameko.rpc_method_id": "svc.work"}
    with pytest.warns(DeprecationWarning, match=r"rpc_method_id\(delay_exchange="):
        assert rpc_method_id(headers, "rpc-svc", exchange="retries") == "svc.work"
    assert rpc_method_id(headers, "rpc-svc", delay_exchange="retries") == "svc.work"
    assert rpc_method_id(headers, "rpc-svc") == "rpc-svc"


@pytest.mark.parametrize("module", [aio_backoff, aio_backoff.core])
@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        ("DEFAULT_EXCHANGE", "DEFAULT_DELAY_EXCHANGE", "backoff"),
        ("EXPIRY_GRACE_PERIOD_MS", "DEFAULT_GRACE_MS", 5000),
    ],
)
def test_renamed_constants_warn_and_still_work(
    module: Any, old: str, new: str, value: object
) -> None:
    with pytest.warns(DeprecationWarning, match=rf"{module.__name__}\.{new}") as warned:
        assert getattr(module, old) == value
    assert warned[0].filename == __file__
    assert getattr(module, new) == value
    assert old not in module.__all__


@pytest.mark.parametrize("module", [aio_backoff, aio_backoff.core])
def test_an_unknown_name_is_still_an_attribute_error(module: Any) -> None:
    with pytest.raises(AttributeError, match="NO_SUCH_NAME"):
        _ = module.NO_SUCH_NAME


def test_backoff_next_takes_nameko_amqp_retrys_keyword_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Steady().next(_Message(LEGACY), backoff_exchange_name="retries") == 100
        assert Steady().next(_Message(LEGACY), "retries") == 100
        assert Steady().next(_Message(LEGACY), delay_exchange="retries") == 100


@pytest.mark.parametrize(
    "call",
    [
        lambda: plan_retry(Steady(), LEGACY, target_queue="q"),
        lambda: retries_done(LEGACY),
        lambda: delay_queue(100),
        lambda: DelayQueue(100).delay_exchange,
        lambda: rpc_method_id(LEGACY, "rpc-svc"),
        lambda: aio_backoff.DEFAULT_DELAY_EXCHANGE,
    ],
)
def test_the_new_names_do_not_warn(call: Callable[[], object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()


class _Message:
    def __init__(self, headers: dict[str, Any]) -> None:
        self.headers = headers
