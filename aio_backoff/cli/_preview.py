"""`aio-backoff preview`: a schedule as a table (and a plot with --plot)."""

from __future__ import annotations

import argparse

NAME = "preview"
HELP = "a schedule as a table (and a plot with --plot)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(NAME)  # placeholder of the cli-base branch
