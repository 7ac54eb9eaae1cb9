"""What a user reads first: the README's example, run as written, and the version."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import aio_backoff
from aio_backoff.cli import main

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The first ```python block of README.md (check_artifact.sh runs it too)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```python\n(.*?)^```$", text, re.S | re.M)
    assert block, "README.md has no ```python block"
    return block.group(1)


@pytest.mark.broker
async def test_the_readme_example_runs_as_written(broker: Any, tmp_path: Path) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example(), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AIO_BACKOFF_AMQP_URL": broker.amqp_url},
    )
    async with asyncio.timeout(25):
        stdout, stderr = await process.communicate()

    assert process.returncode == 0, stderr.decode()
    assert stdout.decode() == "handled order 42 after 2 retries\n"


@pytest.mark.core
def test_one_version_source_read_by_the_package_the_cli_and_the_changelog(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = pyproject["project"]["version"]

    assert aio_backoff.__version__ == version
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"aio-backoff {version}\n"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    first = re.search(r"^## (\S+)", changelog, re.M)
    assert first, "CHANGELOG.md has no release heading"
    assert first.group(1) == version
