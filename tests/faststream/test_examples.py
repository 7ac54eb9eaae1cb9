"""docs/examples/faststream_app.py runs against the test broker and says so."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.aio.test_examples import run_example

pytestmark = [pytest.mark.broker, pytest.mark.timeout(30)]


async def test_the_faststream_example_retries_then_charges(broker: Any) -> None:
    code, out, err = await run_example("faststream_app.py", broker)

    assert code == 0, err
    attempts = re.findall(r"^\s*(\d+\.\d+)s  attempt (\d) for order-42$", out, re.M)
    assert [attempt for _, attempt in attempts] == ["1", "2", "3"]
    at = [float(seconds) for seconds, _ in attempts]
    assert at[1] - at[0] > 0.09  # GatewayBusy: 100 ms (printed to 10 ms)
    assert at[2] - at[1] > 0.19  # ConnectionError, as GatewayBusy: 200 ms
    assert re.findall(r"^charged .*$", out, re.M) == ["charged order-42"]
