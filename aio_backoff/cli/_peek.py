"""`aio-backoff peek`: the copies waiting for one queue, and its parked messages."""

from __future__ import annotations

import argparse

NAME = "peek"
HELP = "the copies waiting for one queue, and its parked messages"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(NAME)  # placeholder of the cli-base branch
