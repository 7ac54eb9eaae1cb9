"""aio_backoff loads FastStream only when aio_backoff.faststream is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.core, pytest.mark.timeout(30)]


def test_import_aio_backoff_does_not_import_faststream() -> None:
    script = (
        "import sys, aio_backoff, aio_backoff.aiopika, aio_backoff.core\n"
        "aio_backoff.Retrier, aio_backoff.DelayedPublisher\n"
        "assert 'faststream' not in sys.modules, 'aio_backoff imported faststream'\n"
        "import aio_backoff.faststream\n"
        "assert 'faststream' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=25)
