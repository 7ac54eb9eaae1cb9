"""The nameko examples in docs/examples run as written (in this test's vhost)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"

pytestmark = pytest.mark.timeout(30)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"nameko_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixed_schedule(rabbit_config, capsys):
    assert load("nameko_fixed_schedule").main(rabbit_config) == "report ready"
    assert "retried every 50 ms" in capsys.readouterr().out


def test_infinite_schedule(rabbit_config):
    example = load("nameko_infinite_schedule")
    assert example.InfiniteBackoff().effective_limit() is None
    assert example.main(rabbit_config) == "shipped order 42"


def test_custom_schedule(rabbit_config):
    gaps = load("nameko_custom_schedule").main(rabbit_config)
    assert len(gaps) == 3
    for gap, scheduled in zip(gaps, (30, 60, 120), strict=True):
        assert gap >= scheduled


def test_dynamic_schedule(rabbit_config):
    example = load("nameko_dynamic_schedule")
    for backoff in (example.DynamicBackoff, example.HelperBackoff):
        schedule = [backoff.get_next_schedule_item(i) for i in range(5)]
        assert schedule == [10, 20, 40, 80, 80], backoff.__name__
    gaps, expired = example.main(rabbit_config)
    assert len(gaps) == 4
    for gap, scheduled in zip(gaps, (10, 20, 40, 80), strict=True):
        assert gap >= scheduled
    assert expired.startswith("Expired: Backoff aborted after '6' retries")


def test_hooks(rabbit_config, capsys):
    seen = load("nameko_hooks").main(rabbit_config)
    # Each delivery's worker tells its own events: with a 30 ms delay the copy can
    # come back (CameBack, another worker) before the worker that placed it has
    # told Scheduled (after the confirm), so only the order within one worker holds.
    assert sorted(seen) == sorted(
        ["Scheduled", "CameBack", "Scheduled", "CameBack", "Expired", "Parked"]
    )
    assert seen.index("Expired") < seen.index("Parked")
    out = capsys.readouterr().out
    assert "the caller got Expired" in out
    assert "prometheus: retries 2.0" in out
