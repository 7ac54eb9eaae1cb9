"""`aio-backoff status`: per target queue, the copies waiting and when the next is
due; per parking queue, the parked messages.

The delay queues are found through the management API (the ladder's levels of both
queue types under ``--delay-exchange``, its undeliverable queue, every
``backoff--{N}ms``, every ``*.parked``); without it, over AMQP, the ladder's queues
by name only. Which target a copy waits for is in its routing key, so each delay
queue's messages are read with :func:`._broker.look`, which gives them back in place.
"""

from __future__ import annotations

import argparse
import datetime
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from aio_pika.abc import AbstractConnection

from ..aiopika._verify import server_version
from ..core._ladder import LADDER_LEVELS, QUEUE_TYPES, Ladder
from ..core._protocol import (
    DELAY_HEADER,
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    RETRIES_HEADER,
)
from ._broker import (
    Held,
    ManagementOff,
    add_broker_arguments,
    connect,
    look,
    management_for,
    queue_size,
    unreadable,
    vhost_of,
)
from ._output import emit, table

NAME = "status"
HELP = (
    "per target queue, the copies waiting and when the next is due; per parking "
    "queue, the parked messages"
)

DEFAULT_SCAN = 10_000
_PER_DELAY = re.compile(r"^backoff--(\d+)ms$")
_PARKED = ".parked"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""
    add_broker_options(parser)


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    """The options ``status`` and ``peek`` share."""
    add_broker_arguments(parser)
    parser.add_argument(
        "--vhost", help="the virtual host (default: the one --url names)"
    )
    parser.add_argument(
        "--scan",
        type=int,
        default=DEFAULT_SCAN,
        metavar="N",
        help="read at most N messages of each delay queue (default: %(default)s)",
    )


@dataclass(frozen=True)
class DelayQueueSeen:
    """A queue where copies wait: a ladder level, its undeliverable queue, or a
    per-delay queue."""

    name: str
    level: int | None = None
    """The ladder level (``None``: not a level)."""
    per_delay_ms: int | None = None
    """A per-delay queue's delay."""
    unreadable: str | None = None
    """Why its messages are not read (see :func:`._broker.unreadable`)."""


@dataclass(frozen=True)
class Copy:
    """One delayed copy, as read from its delay queue."""

    target: str
    where: str
    message_id: str | None
    retries: Any
    delay_ms: Any
    due_after: datetime.datetime | None
    due_by: datetime.datetime | None
    """When its wait ends, at the earliest and at the latest: a copy does not say
    when it entered its queue. ``None``: never (undeliverable)."""

    def document(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "due_after": _when(self.due_after),
            "due_by": _when(self.due_by),
        }


@dataclass(frozen=True)
class Parked:
    """One parked message."""

    queue: str
    message_id: str | None
    retries: Any
    reason: Any
    parked_from: Any

    def document(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Broker:
    """What the listing found: where copies wait, and the parking queues."""

    delay_queues: list[DelayQueueSeen]
    parking_queues: list[str] | None
    """``None``: not listed (no management API)."""
    notes: list[str] = field(default_factory=list)
    queues: dict[str, dict[str, Any]] | None = None
    """Every queue, as the management API gave it."""
    major: int | None = None

    def unreadable(self, name: str) -> str | None:
        """Why ``name`` (a parking queue) must not be read, if so."""
        if self.queues is None:
            return (
                "without the management API its type and delivery limit are "
                "unknown: only its size is shown"
            )
        queue = self.queues.get(name)
        return None if queue is None else unreadable(queue, self.major)


def _when(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def _text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value


def _ladders(delay_exchange: str) -> list[Ladder]:
    return [Ladder(delay_exchange, queue_type) for queue_type in QUEUE_TYPES]


def _seen(name: str, delay_exchange: str, unread: str | None) -> DelayQueueSeen | None:
    for ladder in _ladders(delay_exchange):
        if name == ladder.undeliverable:
            return DelayQueueSeen(name, unreadable=unread)
        for level in range(LADDER_LEVELS):
            if name == ladder.level(level):
                return DelayQueueSeen(name, level=level, unreadable=unread)
    match = _PER_DELAY.match(name)
    if match is not None:
        return DelayQueueSeen(name, per_delay_ms=int(match[1]), unreadable=unread)
    return None


def major_version(connection: AbstractConnection) -> int | None:
    """The broker's major version, from the connection."""
    version = server_version(connection) or ""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


async def find_queues(
    args: argparse.Namespace, connection: AbstractConnection
) -> Broker:
    """The delay queues and parking queues on the broker: listed by the management
    API, or (when it is off) the ladder's queues found by name over AMQP."""
    vhost = args.vhost or vhost_of(args.url)
    try:
        queues = management_for(args).queues(vhost)
    except ManagementOff as off:
        found = []
        for ladder in _ladders(args.delay_exchange):
            unread = (
                None
                if ladder.queue_type == "classic"
                else "a quorum queue, whose delivery limit only the management API "
                "shows: only its size is shown"
            )
            for name in ladder.queue_names:
                if await queue_size(connection, name) is not None:
                    found.append(_seen(name, args.delay_exchange, unread))
        return Broker(
            delay_queues=[seen for seen in found if seen is not None],
            parking_queues=None,
            notes=[
                f"{off.what}: only the ladder's queues were read, by name; "
                "per-delay queues and parking queues cannot be listed over AMQP"
            ],
        )
    major = major_version(connection)
    by_name = {str(queue["name"]): queue for queue in queues}
    seen = [
        _seen(name, args.delay_exchange, unreadable(by_name[name], major))
        for name in sorted(by_name)
    ]
    return Broker(
        delay_queues=[one for one in seen if one is not None],
        parking_queues=[name for name in sorted(by_name) if name.endswith(_PARKED)],
        queues=by_name,
        major=major,
    )


def as_copy(held: Held, seen: DelayQueueSeen, now: datetime.datetime) -> Copy:
    """A message of a delay queue read as a copy: its target and when it is due."""
    headers = held.headers
    target = held.routing_key
    due_after: datetime.datetime | None = None
    due_by: datetime.datetime | None = None
    if seen.per_delay_ms is not None:
        due_after = now
        due_by = now + datetime.timedelta(milliseconds=seen.per_delay_ms)
    else:
        try:
            delay, target = Ladder.parse_routing_key(held.routing_key)
        except ValueError:
            delay = None
        if seen.level is not None and delay is not None:
            below = delay & (2**seen.level - 1)
            due_after = now + datetime.timedelta(milliseconds=below)
            due_by = due_after + datetime.timedelta(milliseconds=2**seen.level)
    return Copy(
        target=target,
        where=seen.name,
        message_id=held.message_id,
        retries=headers.get(RETRIES_HEADER),
        delay_ms=headers.get(DELAY_HEADER),
        due_after=due_after,
        due_by=due_by,
    )


def as_parked(held: Held) -> Parked:
    return Parked(
        queue=held.queue,
        message_id=held.message_id,
        retries=held.headers.get(RETRIES_HEADER),
        reason=_text(held.headers.get(PARKED_ERROR_HEADER)),
        parked_from=_text(held.headers.get(PARKED_QUEUE_HEADER)),
    )


async def read_copies(
    connection: AbstractConnection,
    delay_queues: list[DelayQueueSeen],
    scan: int,
    notes: list[str],
) -> tuple[list[Copy], dict[str, int]]:
    """Every copy waiting in ``delay_queues`` (at most ``scan`` per queue), read and
    given back one queue at a time; and the sizes of the queues not read."""
    copies: list[Copy] = []
    unread: dict[str, int] = {}
    for seen in delay_queues:
        if seen.unreadable is not None:
            size = await queue_size(connection, seen.name)
            if size:
                unread[seen.name] = size
                notes.append(f"{seen.name} not read ({seen.unreadable})")
            continue
        held = await look(connection, seen.name, scan)
        if held is None:  # gone since it was listed (a per-delay queue expired)
            continue
        now = datetime.datetime.now(datetime.UTC)
        copies += [as_copy(one, seen, now) for one in held]
        if len(held) == scan:
            left = await queue_size(connection, seen.name)
            notes.append(
                f"{seen.name}: read the first {scan} messages of {left}; "
                "pass --scan to read more"
            )
    return copies, unread


def _where(copies: list[Copy]) -> str:
    counts = Counter(copy.where for copy in copies)
    return ", ".join(f"{where} x{count}" for where, count in sorted(counts.items()))


def _next_due(copies: list[Copy]) -> datetime.datetime | None:
    due = [copy.due_by for copy in copies if copy.due_by is not None]
    return min(due) if due else None


async def run(args: argparse.Namespace) -> int:
    connection = await connect(args.url)
    try:
        broker = await find_queues(args, connection)
        copies, unread = await read_copies(
            connection, broker.delay_queues, args.scan, broker.notes
        )
        parked = {
            name: await queue_size(connection, name)
            for name in broker.parking_queues or []
        }
    finally:
        await connection.close()
    by_target: dict[str, list[Copy]] = {}
    for copy in copies:
        by_target.setdefault(copy.target, []).append(copy)
    targets = [
        {
            "queue": target,
            "waiting": len(waiting),
            "where": dict(Counter(copy.where for copy in waiting)),
            "next_due_by": _when(_next_due(waiting)),
        }
        for target, waiting in sorted(by_target.items())
    ]
    parking = [
        {"queue": name, "parked": size}
        for name, size in parked.items()
        if size is not None
    ]
    document = {
        "targets": targets,
        "parking_queues": parking,
        "delay_queues": [seen.name for seen in broker.delay_queues],
        "not_read": unread,
        "notes": broker.notes,
    }
    rows = [{**row, "where": _where(by_target[str(row["queue"])])} for row in targets]
    text = [
        "copies waiting, per target queue:",
        table(rows, ["queue", "waiting", "next_due_by", "where"]) if rows else "  none",
        "",
        "parked messages, per parking queue:",
        table(parking, ["queue", "parked"]) if parking else "  none",
    ]
    if broker.parking_queues is None:
        text[-1] = "  not listed (no management API)"
    if unread:
        text += ["", "copies not read (targets unknown):"]
        text.append(
            table(
                [{"queue": k, "waiting": v} for k, v in unread.items()],
                ["queue", "waiting"],
            )
        )
    text += [f"note: {note}" for note in broker.notes]
    emit(document, "\n".join(text), as_json=args.json)
    return 0
