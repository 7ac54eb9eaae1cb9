"""The layers import as the README says: the core never loads aio-pika."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aio_backoff

pytestmark = pytest.mark.core


def _loads_aio_pika(statement: str) -> bool:
    probe = f"import sys\n{statement}\nprint('aio_pika' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "statement",
    [
        "import aio_backoff.core",
        "import aio_backoff.core.nameko_wire",
        "import aio_backoff",
        "from aio_backoff import Backoff, plan_retry, RemoteExpired",
        "import nameko_bridge, nameko_bridge.rpc, nameko_bridge.messaging",
    ],
)
def test_the_core_does_not_load_aio_pika(statement: str) -> None:
    assert not _loads_aio_pika(statement)


@pytest.mark.timeout(60)
def test_layer_names_load_on_first_use() -> None:
    assert _loads_aio_pika("from aio_backoff import Retrier")

    assert aio_backoff.NamekoService is aio_backoff.nameko_protocol.NamekoService
    assert "Retrier" in dir(aio_backoff)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = aio_backoff.nope  # type: ignore[attr-defined]
