"""`aio-backoff status`: per target queue, the copies waiting and when the next is due; per parking queue, the parked messages."""

from __future__ import annotations

import argparse

NAME = "status"
HELP = "per target queue, the copies waiting and when the next is due; per parking queue, the parked messages"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError(NAME)  # placeholder of the cli-base branch
