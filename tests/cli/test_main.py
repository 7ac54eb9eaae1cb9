"""The command itself: ``python -m aio_backoff.cli``, the console script, Ctrl-C."""

from __future__ import annotations

import argparse
import runpy
import sys

import pytest

from aio_backoff import cli
from aio_backoff.cli import _preview
from aio_backoff.cli._errors import Exit

pytestmark = [pytest.mark.core, pytest.mark.timeout(30)]


def test_python_dash_m_runs_the_command_and_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["aio-backoff", "preview", "100,200", "--limit", "2"]
    )
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("aio_backoff.cli", run_name="__main__")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "100" in out
    assert "200" in out


def test_ctrl_c_says_interrupted_and_exits_7(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_preview, "run", interrupted)
    assert cli.main(["preview", "100"]) == Exit.INTERRUPTED == 7
    assert "aio-backoff preview: interrupted" in capsys.readouterr().err


def test_no_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err
