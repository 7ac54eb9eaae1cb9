"""`aio-backoff verify`: whether the broker runs the chosen topology, with what to do."""

from __future__ import annotations

import argparse

NAME = "verify"
HELP = "whether the broker runs the chosen topology, with what to do"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(NAME)  # placeholder of the cli-base branch
