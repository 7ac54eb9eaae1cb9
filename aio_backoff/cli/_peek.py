"""`aio-backoff peek QUEUE`: the copies waiting for one queue, and its parked
messages, left where they are (:func:`._broker.look`: read, then given back by
closing the channel; docs/cli.md says what that does to order, to the redelivered
flag and to a quorum queue's delivery limit)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from ..core._topology import parking_queue_name
from ._broker import connect, look, queue_size
from ._errors import CliError, Exit
from ._output import emit, table
from ._status import Copy, add_broker_options, as_parked, find_queues, read_copies

NAME = "peek"
HELP = "the copies waiting for one queue, and its parked messages"

_PARKED = ".parked"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""
    parser.add_argument(
        "queue", metavar="QUEUE", help="the target queue (or its QUEUE.parked)"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=20,
        metavar="N",
        help="show at most N copies and N parked messages (default: %(default)s)",
    )
    add_broker_options(parser)


def _short(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%H:%M:%S.%f")[:-3]


def _copy_row(copy: Copy) -> dict[str, Any]:
    return {
        "message_id": copy.message_id,
        "retries": copy.retries,
        "delay_ms": copy.delay_ms,
        "due_utc": (
            "never (undeliverable)"
            if copy.due_by is None
            else f"{_short(copy.due_after)}..{_short(copy.due_by)}"
        ),
        "where": copy.where,
    }


async def run(args: argparse.Namespace) -> int:
    target = (
        args.queue.removesuffix(_PARKED) if args.queue.endswith(_PARKED) else args.queue
    )
    parking = parking_queue_name(target)
    connection = await connect(args.url)
    try:
        broker = await find_queues(args, connection)
        exists = await queue_size(connection, target) is not None
        copies, unread = await read_copies(
            connection, broker.delay_queues, args.scan, broker.notes
        )
        mine = [copy for copy in copies if copy.target == target]
        parked_size = await queue_size(connection, parking)
        why = broker.unreadable(parking) if parked_size else None
        held = (
            await look(connection, parking, args.limit)
            if parked_size and why is None
            else []
        )
    finally:
        await connection.close()
    if not exists and parked_size is None and not mine:
        what = f"no queue {target!r}, no {parking!r} and no copy waiting for it"
        todo = (
            "Check the name and the virtual host (--vhost); `aio-backoff status` "
            "lists the queues with copies or parked messages"
        )
        raise CliError(what, todo, Exit.UNKNOWN)
    if why is not None:
        broker.notes.append(f"{parking} not read ({why})")
    parked = [as_parked(one) for one in held or []]
    shown = sorted(mine, key=lambda c: (c.due_by is None, c.due_by))[: args.limit]
    document = {
        "queue": target,
        "copies": [copy.document() for copy in shown],
        "copies_waiting": len(mine),
        "parked": [one.document() for one in parked],
        "parked_total": parked_size or 0,
        "not_read": unread,
        "notes": broker.notes,
    }
    text = [
        f"copies waiting for {target}: {len(mine)}"
        + (f" (showing {len(shown)})" if len(shown) < len(mine) else ""),
    ]
    if shown:
        text.append(
            table(
                [_copy_row(copy) for copy in shown],
                ["message_id", "retries", "delay_ms", "due_utc", "where"],
            )
        )
    text += [
        "",
        f"parked in {parking}: {parked_size or 0}"
        + (f" (showing {len(parked)})" if len(parked) < (parked_size or 0) else ""),
    ]
    if parked:
        text.append(
            table(
                [one.document() for one in parked],
                ["message_id", "retries", "reason"],
            )
        )
    text += [f"note: {note}" for note in broker.notes]
    emit(document, "\n".join(text), as_json=args.json)
    return 0
