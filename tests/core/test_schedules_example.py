"""docs/examples/schedules.py runs and plans the delays docs/backoff.md shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.core, pytest.mark.timeout(30)]

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "schedules.py"


def test_schedules_example_plans_the_documented_delays() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    lines = done.stdout.splitlines()

    assert lines[0] == (
        "Fixed        [100, 200, 500, 500, 500] "
        "-> Backoff aborted after '5' retries (~2 seconds)"
    )
    assert lines[1] == (
        "Exponential  [100, 200, 400, 800, 1000, 1000] "
        "-> Backoff aborted after '6' retries (~4 seconds)"
    )
    jittered = [int(d) for d in lines[2].split("[")[1].split("]")[0].split(", ")]
    caps = [100, 200, 400, 800, 800, 800]  # min(100 * 2**i, 800)
    assert len(jittered) == 6
    assert all(0 <= d <= cap for d, cap in zip(jittered, caps, strict=True))
    assert lines[3].startswith("Dynamic      [50, 100, 150, 200] -> ")
    assert lines[4] == "Retry-After  Backoff(retry #1 in 3000ms)"
