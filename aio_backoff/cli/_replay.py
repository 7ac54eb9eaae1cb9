"""`aio-backoff replay`: move parked messages back to be processed (confirmed before acked)."""

from __future__ import annotations

import argparse

NAME = "replay"
HELP = "move parked messages back to be processed (confirmed before acked)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(NAME)  # placeholder of the cli-base branch
