"""`aio-backoff replay`: move parked messages back to be processed (confirmed before
acked).

A consumer takes the messages from the parking queue (``2 * BATCH`` unacked at
most); each batch is published to its queue through the default exchange
(mandatory, with publisher confirms), and each message is acked from the parking
queue only once the broker has confirmed its copy. An interrupted replay therefore
loses nothing: what was not acked goes back to the parking queue when the
connection closes; at most one batch (confirmed, not yet acked) is both replayed and
still parked. A replay moves the messages parked when it starts (at most
``--limit``); ``--dry-run`` reads them with ``basic.get`` and acks none.

Where a message goes: ``--to QUEUE``, else the queue its ``backoff-queue`` header
names (where it was consumed from when it was parked), else the parking queue's
name less ``.parked``. The replayed message keeps its body and properties (less
``user_id``, which the broker checks against this connection's user) and its
headers less the parking ones (``backoff-error``, ``backoff-queue``); with
``--reset-count`` also less the retry count (``backoff-retries``, the ``backoff``
delay, and the broker's ``x-death``/``x-first-death-*``/``x-last-death-*``, which
the library counts for nameko-amqp-retry's messages), so its consumer gives it the
whole schedule again. Without it, the count is kept: a message that expired is
expired again at its first ``Backoff``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import aio_pika
import aiormq
import aiormq.abc
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelNotFoundEntity,
    DeliveryError,
    PublishError,
)
from pamqp import commands as spec

from ..core._protocol import (
    DEATH_HEADER_PREFIXES,
    DELAY_HEADER,
    PARKED_ERROR_HEADER,
    PARKED_QUEUE_HEADER,
    RETRIES_HEADER,
    encodable_headers,
    retries_done,
)
from ..core._topology import parking_queue_name
from ._broker import add_broker_arguments, connect, management_for, vhost_of
from ._errors import CliError, Exit
from ._output import emit, table

NAME = "replay"
HELP = "move parked messages back to be processed (confirmed before acked)"

BATCH = 200
"""Messages taken, published and acked together: at most this many are in two
places at once if the replay is killed."""

CONFIRM_TIMEOUT_S = 30.0
IDLE_S = 2.0
"""How long a replay waits for the next message before it ends (the queue was
emptied by someone else)."""
CONNECT_TIMEOUT_S = 10.0
_PARKED_SUFFIX = parking_queue_name("")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's arguments to ``parser``."""
    parser.add_argument(
        "parked_queue", metavar="PARKED_QUEUE", help="the parking queue, {queue}.parked"
    )
    parser.add_argument(
        "--to",
        metavar="QUEUE",
        help="publish to this queue instead of each message's own (its backoff-queue "
        "header, else PARKED_QUEUE less .parked)",
    )
    parser.add_argument(
        "--reset-count",
        action="store_true",
        help="clear the retry count (backoff-retries, x-death), so the message gets "
        "its whole schedule again; without it an expired message expires again at "
        "its first Backoff",
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        metavar="N",
        help="move at most N messages (default: all)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would move and where; move nothing (the messages are read "
        "and returned to the parking queue, flagged redelivered)",
    )
    add_broker_arguments(parser)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        msg = f"expected a whole number of 1 or more, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


# -- what a replayed message is ---------------------------------------------------


def replayed_headers(
    headers: Mapping[str, Any] | None, *, reset_count: bool
) -> dict[str, Any]:
    """The headers of a replayed message: less the parking ones, and with
    ``reset_count`` less every header that counts retries (:func:`retries_done`
    reads 0 from the result)."""
    result = encodable_headers(headers)
    for key in (PARKED_ERROR_HEADER, PARKED_QUEUE_HEADER):
        result.pop(key, None)
    if reset_count:
        for key in list(result):
            if key in (RETRIES_HEADER, DELAY_HEADER) or key.startswith(
                DEATH_HEADER_PREFIXES
            ):
                del result[key]
    return result


def replayed_properties(
    properties: spec.Basic.Properties, *, reset_count: bool
) -> spec.Basic.Properties:
    """``properties`` with :func:`replayed_headers`, less ``user_id``."""
    return spec.Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=replayed_headers(properties.headers, reset_count=reset_count),
        delivery_mode=properties.delivery_mode,
        priority=properties.priority,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        expiration=properties.expiration,
        message_id=properties.message_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        app_id=properties.app_id,
        cluster_id=properties.cluster_id,
    )


def origin(parked_queue: str, headers: Mapping[str, Any] | None) -> str | None:
    """Where a parked message came from: its ``backoff-queue`` header, else the
    parking queue's name less ``.parked``; None if neither says."""
    named = (headers or {}).get(PARKED_QUEUE_HEADER)
    if isinstance(named, bytes):
        named = named.decode("utf-8", "replace")
    if isinstance(named, str) and named:
        return named
    if parked_queue.endswith(_PARKED_SUFFIX) and len(parked_queue) > len(
        _PARKED_SUFFIX
    ):
        return parked_queue[: -len(_PARKED_SUFFIX)]
    return None


# -- the broker --------------------------------------------------------------------


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    vhost = vhost_of(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672} (vhost {vhost!r})"


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A connection to ``url`` (:func:`._broker.connect`, so its errors read as
    every subcommand's), closed on the way out."""
    connection = await connect(url, timeout=CONNECT_TIMEOUT_S)
    try:
        yield connection
    finally:
        await connection.close()


class Queues:
    """Which queues exist (passive declares, each on a channel of its own because
    a failed one closes its channel), remembered."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, url: str) -> None:
        self.connection = connection
        self.where = _where(url)
        self.known: dict[str, int] = {}

    async def check(self, name: str, todo: str) -> int:
        """The message count of queue ``name``; a :class:`CliError` with ``todo``
        when there is no such queue."""
        if name in self.known:
            return self.known[name]
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
        except ChannelNotFoundEntity as error:
            msg = f"there is no queue {name!r} on {self.where}"
            raise CliError(msg, todo, Exit.UNKNOWN) from error
        except ChannelAccessRefused as error:
            msg = f"the broker at {self.where} refused access to queue {name!r}"
            raise CliError(
                msg, "Use a user with read and write on it in --url", Exit.ACCESS
            ) from error
        finally:
            if not channel.is_closed:
                await channel.close()
        count = declared.declaration_result.message_count or 0
        self.known[name] = count
        return count


# -- the replay --------------------------------------------------------------------


@dataclass
class Tally:
    parked_queue: str
    reset_count: bool
    dry_run: bool
    expected: int
    targets: Counter[str] = field(default_factory=Counter)
    retries: Counter[int] = field(default_factory=Counter)
    """Retry counts the messages had (as the library counts them), for --dry-run."""
    started: float = field(default_factory=time.monotonic)
    note: str | None = None
    """Why a dry run read no message."""

    @property
    def moved(self) -> int:
        return sum(self.targets.values())


class Progress:
    """A bar on stderr, only when it is a terminal; ten updates a second at most."""

    def __init__(self, total: int, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.total = max(total, 1)
        self.shown = -1.0
        self.on = self.out.isatty()

    def update(self, done: int, *, final: bool = False) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if not final and now - self.shown < 0.1:
            return
        self.shown = now
        width = 30
        filled = min(width, width * done // self.total)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} messages"
        )
        if final:
            self.out.write("\n")
        self.out.flush()


class Getter:
    """Messages taken one ``basic.get`` at a time, unacked (``--dry-run``: nothing
    is delivered beyond what is counted)."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue

    async def batch(self, size: int) -> list[aiormq.abc.DeliveredMessage]:
        taken: list[aiormq.abc.DeliveredMessage] = []
        while len(taken) < size:
            message = await self.channel.basic_get(self.queue, no_ack=False)
            if not isinstance(message.delivery, spec.Basic.GetOk):
                break
            taken.append(message)
        return taken

    async def stop(self) -> None:
        """Nothing to stop."""


class Consumer:
    """Messages delivered by a consumer, handed out in the order they came, never
    more than ``total``: a message delivered and not acked goes back to the queue
    when the channel closes, and on a quorum queue that counts toward its delivery
    limit (measured on RabbitMQ 3.10, 4.0 and 4.3), so none is delivered that the
    replay will not move.

    The consumer's prefetch is ``2 * BATCH``, less near the end: before a batch is
    acked (which lets the broker deliver more), a consumer that could then deliver
    past ``total`` is cancelled, and the next batch starts one with a prefetch of
    what is left.
    """

    def __init__(
        self, channel: aiormq.abc.AbstractChannel, queue: str, total: int
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.left = total
        """Messages still to hand out (delivered or not)."""
        self.inbox: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()
        self.tag: str | None = None
        self.prefetch = 0

    async def _delivered(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.inbox.put_nowait(message)

    async def batch(self, size: int) -> list[aiormq.abc.DeliveredMessage]:
        """Up to ``size`` messages: those delivered by now, or the next one to
        come within ``IDLE_S``; none after that."""
        undelivered = self.left - self.inbox.qsize()
        if self.tag is None and undelivered > 0:
            self.prefetch = min(2 * BATCH, undelivered)
            await self.channel.basic_qos(prefetch_count=self.prefetch)
            consuming = await self.channel.basic_consume(self.queue, self._delivered)
            self.tag = consuming.consumer_tag
        if self.tag is None and self.inbox.empty():
            return []
        try:
            first = await asyncio.wait_for(self.inbox.get(), IDLE_S)
        except TimeoutError:
            return []
        taken = [first]
        while len(taken) < min(size, self.left) and not self.inbox.empty():
            taken.append(self.inbox.get_nowait())
        self.left -= len(taken)
        if self.tag is not None and self.prefetch > self.left:
            # after the ack the broker could deliver up to prefetch - held more
            await self.stop()
        return taken

    async def stop(self) -> None:
        if self.tag is not None and not self.channel.is_closed:
            await self.channel.basic_cancel(self.tag)
        self.tag = None


async def _publish_and_ack(
    channel: aiormq.abc.AbstractChannel,
    batch: list[tuple[aiormq.abc.DeliveredMessage, str]],
    tally: Tally,
) -> None:
    """Publish ``batch`` (message, target) with confirms, then ack each confirmed
    one from the parking queue; a :class:`CliError` for the first that is not."""
    results = await asyncio.gather(
        *(
            channel.basic_publish(
                message.body,
                exchange="",
                routing_key=target,
                properties=replayed_properties(
                    message.header.properties, reset_count=tally.reset_count
                ),
                mandatory=True,
                timeout=CONFIRM_TIMEOUT_S,
            )
            for message, target in batch
        ),
        return_exceptions=True,
    )
    failed: list[tuple[str, object]] = []
    confirmed: list[int] = []
    for (message, target), result in zip(batch, results, strict=True):
        if isinstance(result, spec.Basic.Ack):
            confirmed.append(_tag(message))
            tally.targets[target] += 1
        else:
            failed.append((target, result))
    if not failed and confirmed:
        await channel.basic_ack(confirmed[-1], multiple=True)
    else:
        for tag in confirmed:
            await channel.basic_ack(tag)
    if failed:
        target, outcome = failed[0]
        if isinstance(outcome, BaseException) and not isinstance(
            outcome, DeliveryError | TimeoutError
        ):
            raise outcome
        why = (
            "it was returned unroutable (the queue is gone?)"
            if isinstance(outcome, PublishError)
            else "the broker refused it (a nack: is the queue full, with "
            "x-overflow reject-publish?)"
            if isinstance(outcome, DeliveryError | spec.Basic.Nack)
            else f"the broker did not confirm it ({type(outcome).__name__})"
        )
        msg = (
            f"{len(failed)} message(s) could not be published to {target!r}: {why}; "
            f"they stay in {tally.parked_queue!r}, {tally.moved} were replayed"
        )
        raise CliError(
            msg,
            "Check the queue and the broker's logs, then run the replay again",
            Exit.UNKNOWN if isinstance(outcome, PublishError) else Exit.UNREACHABLE,
        )


def _tag(message: aiormq.abc.DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.GetOk | spec.Basic.Deliver)
    return int(delivery.delivery_tag or 0)


async def _destinations(
    args: argparse.Namespace,
    queues: Queues,
    taken: list[aiormq.abc.DeliveredMessage],
    tally: Tally,
) -> list[tuple[aiormq.abc.DeliveredMessage, str]]:
    """Each message with the queue it goes to (which must exist); counts the
    retries they had."""
    batch = []
    for message in taken:
        headers = message.header.properties.headers
        target = args.to or origin(args.parked_queue, headers)
        if target is None:
            msg = (
                f"cannot tell where the messages of {args.parked_queue!r} came "
                "from: it is not named {queue}.parked and a message has no "
                "backoff-queue header"
            )
            raise CliError(msg, "Say where with --to QUEUE", Exit.USAGE)
        await queues.check(
            target,
            "Declare it (start its consumer) or replay elsewhere with --to QUEUE",
        )
        batch.append((message, target))
        tally.retries[retries_done(headers, args.delay_exchange)] += 1
    return batch


async def replay(args: argparse.Namespace) -> Tally:
    """Move (or with ``args.dry_run`` count) the parked messages."""
    async with connected(args.url) as connection:
        queues = Queues(connection, args.url)
        waiting = await queues.check(
            args.parked_queue,
            "Give the parking queue's name, {queue}.parked ('aio-backoff status' "
            "lists them)",
        )
        if args.to:
            await queues.check(
                args.to, "Give an existing queue to --to, or declare it first"
            )
        total = waiting if args.limit is None else min(waiting, args.limit)
        tally = Tally(args.parked_queue, args.reset_count, args.dry_run, total)
        if args.dry_run:
            kind = await asyncio.to_thread(queue_type, args)
            if kind != "classic":
                await _count_only(args, queues, tally, kind)
                return tally
        progress = Progress(total)
        channel = await connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        underlay = await channel.get_underlay_channel()
        source: Getter | Consumer = (
            Getter(underlay, args.parked_queue)
            if args.dry_run
            else Consumer(underlay, args.parked_queue, total)
        )
        interrupted = _interrupt_between_batches()
        try:
            while tally.moved < total and not interrupted.is_set():
                taken = await source.batch(min(BATCH, total - tally.moved))
                if not taken:
                    break
                batch = await _destinations(args, queues, taken, tally)
                if args.dry_run:
                    tally.targets.update(target for _, target in batch)
                    # nothing acked: closing the channel returns them all
                else:
                    await _publish_and_ack(underlay, batch, tally)
                progress.update(tally.moved)
        except (asyncio.CancelledError, KeyboardInterrupt):
            print(  # before main's "interrupted"
                f"aio-backoff replay: replayed {tally.moved} message(s) before it "
                f"was stopped; the others are still in {args.parked_queue!r}, the "
                "last batch's perhaps in both places (run it again to finish)",
                file=sys.stderr,
            )
            raise
        finally:
            _restore_interrupt()
            progress.update(tally.moved, final=True)
            await source.stop()
            if not channel.is_closed:
                await channel.close()
        if interrupted.is_set() and tally.moved < total:
            msg = (
                f"interrupted: {'counted' if args.dry_run else 'replayed'} "
                f"{tally.moved} message(s); the others are still in "
                f"{args.parked_queue!r}"
            )
            raise CliError(msg, "Run it again to finish", Exit.INTERRUPTED)
        return tally


def _interrupt_between_batches() -> asyncio.Event:
    """An event that Ctrl-C sets, so that the replay stops after the batch it is
    on (published, confirmed, acked: nothing in two places); a second Ctrl-C
    cancels at once. Where signals cannot be caught (not the main thread), Ctrl-C
    cancels at once."""
    interrupted = asyncio.Event()
    task = asyncio.current_task()

    def on_interrupt() -> None:
        if interrupted.is_set() and task is not None:
            task.cancel()
        interrupted.set()

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_interrupt)
    return interrupted


def _restore_interrupt() -> None:
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


def queue_type(args: argparse.Namespace) -> str | None:
    """``classic``, ``quorum`` or ``stream``: the parking queue's type from the
    management API; None when it does not answer (or is another broker's)."""
    try:
        management = management_for(args, timeout=5.0)
        kind = management.queue(vhost_of(args.url), args.parked_queue).get("type")
    except CliError:
        return None
    return kind if isinstance(kind, str) else None


async def _count_only(
    args: argparse.Namespace, queues: Queues, tally: Tally, kind: str | None
) -> None:
    """A dry run that reads no message: the count, to ``--to`` or the queue the
    parking queue's name says."""
    target = args.to or origin(args.parked_queue, None)
    if target is not None:
        await queues.check(
            target,
            "Declare it (start its consumer) or replay elsewhere with --to QUEUE",
        )
    if tally.expected:
        tally.targets[target or "?"] = tally.expected
    tally.note = (
        f"messages not read: {args.parked_queue!r} is a {kind} queue, where a "
        "message read and returned counts toward its delivery limit"
        if kind
        else "messages not read: the management API did not answer, so the queue "
        "may be a quorum queue, where a message read and returned counts toward "
        "its delivery limit (give --management-url)"
    )


def summary(tally: Tally) -> tuple[dict[str, Any], str]:
    """The document (``--json``) and the text of a replay."""
    seconds = time.monotonic() - tally.started
    document = {
        "parked_queue": tally.parked_queue,
        "dry_run": tally.dry_run,
        "reset_count": tally.reset_count,
        "messages": tally.moved,
        "targets": dict(tally.targets),
        "retries_before": {str(k): v for k, v in sorted(tally.retries.items())},
        "seconds": round(seconds, 3),
        "note": tally.note,
    }
    counted = ", ".join(
        f"{count} to {target!r}" for target, count in tally.targets.most_common()
    )
    reset = "retry count reset" if tally.reset_count else "retry count kept"
    if tally.dry_run:
        rows = [
            {"to": target, "messages": count}
            for target, count in tally.targets.most_common()
        ]
        retried = ", ".join(
            f"{count} with {retries}"
            for retries, count in sorted(tally.retries.items())
        )
        text = (
            f"dry run: would replay {tally.moved} message(s) from "
            f"{tally.parked_queue!r} ({reset}); nothing moved\n"
        )
        if rows:
            text += table(rows, ["to", "messages"]) + "\n"
        if retried:
            text += f"retries so far: {retried}\n"
        if tally.note:
            text += f"({tally.note})\n"
        return document, text
    rate = f", {tally.moved / seconds:.0f}/s" if seconds > 0 and tally.moved else ""
    took = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    text = (
        f"replayed {tally.moved} message(s) from {tally.parked_queue!r}"
        f"{': ' + counted if counted else ''} ({reset}) in {took}{rate}"
    )
    return document, text


async def run(args: argparse.Namespace) -> int:
    tally = await replay(args)
    document, text = summary(tally)
    emit(document, text, as_json=args.json)
    return int(Exit.OK)
