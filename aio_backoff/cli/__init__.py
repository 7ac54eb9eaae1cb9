"""``aio-backoff``: the command line that shows what waits, what is parked, and puts
it back.

Each subcommand is a module of its own (``_status``, ``_peek``, ``_replay``,
``_preview``, ``_verify``) with ``NAME``, ``HELP``, ``configure(parser)`` and
``run(args) -> int``; this module only parses the command line, runs the one asked
for and turns a :class:`~._errors.CliError` into its message and exit code.

Exit codes (:class:`~._errors.Exit`): 0 done; 1 the command ran and found a problem
(``verify``); 2 usage; 3 broker unreachable; 4 bad credentials or access refused;
5 management API off; 6 unknown queue or class; 7 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from . import _peek, _preview, _replay, _status, _verify
from ._errors import CliError, Exit

__all__ = ["main"]

_COMMANDS: tuple[ModuleType, ...] = (_status, _peek, _replay, _preview, _verify)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="aio-backoff",
        description=(
            "Delayed retries on RabbitMQ: what waits, what is parked, and put it "
            "back (docs/cli.md)."
        ),
    )
    top.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        one = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.configure(one)
        one.set_defaults(run=command.run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``aio-backoff`` with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    args = parser().parse_args(argv)
    try:
        outcome = args.run(args)
        if inspect.isawaitable(outcome):
            outcome = asyncio.run(outcome)  # type: ignore[arg-type]
    except CliError as error:
        print(f"aio-backoff {args.command}: {error}", file=sys.stderr)
        return int(error.code)
    except KeyboardInterrupt:
        print(f"aio-backoff {args.command}: interrupted", file=sys.stderr)
        return int(Exit.INTERRUPTED)
    return int(outcome)


def entry_point() -> None:
    """The console script."""
    sys.exit(main())
