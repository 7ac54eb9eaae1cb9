"""docs/examples/observability.py and tracing.py run against the test broker and
say so."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.aio.test_examples import run_example
from tests.observability.scenario import RETRIED_TWICE_THEN_PARKED

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def test_the_observability_example_prints_its_events_and_metrics(
    broker: Any,
) -> None:
    code, out, err = await run_example("observability.py", broker)
    assert code == 0, err
    kinds = re.findall(r"^(\w+)\s+\{", out, re.M)
    assert kinds == RETRIED_TWICE_THEN_PARKED
    assert "prometheus: retries 2.0, expired 1.0, delay 0.1 s" in out
    assert (
        "opentelemetry: aio_backoff.delay, aio_backoff.expired, "
        "aio_backoff.lateness, aio_backoff.parked, aio_backoff.retries"
    ) in out
    lateness = [int(ms) for ms in re.findall(r"'lateness_ms': (-?\d+)", out)]
    assert len(lateness) == 2
    assert all(0 <= ms < 5000 for ms in lateness)


async def test_the_tracing_example_links_the_retry_to_the_first_attempt(
    broker: Any,
) -> None:
    code, out, err = await run_example("tracing.py", broker)
    assert code == 0, err
    first, second, verdict = out.splitlines()
    span = re.fullmatch(r"attempt 1: span ([0-9a-f]{16}) links to nothing", first)
    assert span, first
    assert re.fullmatch(
        rf"attempt 2: span [0-9a-f]{{16}} links to \['{span[1]}'\]", second
    ), second
    assert verdict == "the retry links to the attempt that raised Backoff: True"
