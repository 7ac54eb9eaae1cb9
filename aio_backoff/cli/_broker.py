"""Where the broker is: the options every broker subcommand takes.

``--url`` (AMQP; default ``$AIO_BACKOFF_AMQP_URL`` or
``amqp://guest:guest@localhost:5672/``), ``--management-url`` (default: the AMQP
URL's host and credentials on port 15672), ``--delay-exchange`` (the
``delay_exchange`` the services use; default ``backoff``) and ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from aiormq.exceptions import (
    AMQPError,
    ChannelNotFoundEntity,
    ProbableAuthenticationError,
)

from ..core._topology import DEFAULT_DELAY_EXCHANGE
from ._errors import CliError, Exit

__all__ = [
    "DEFAULT_URL",
    "Held",
    "Management",
    "ManagementOff",
    "add_broker_arguments",
    "connect",
    "look",
    "management_for",
    "management_url_for",
    "queue_size",
    "quoted",
    "unreadable",
    "vhost_of",
]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("AIO_BACKOFF_AMQP_URL", DEFAULT_URL),
        help="the broker's AMQP URL (default: $AIO_BACKOFF_AMQP_URL or %(default)s)",
    )
    parser.add_argument(
        "--management-url",
        default=os.environ.get("AIO_BACKOFF_MANAGEMENT_URL"),
        help="the management API, http://user:password@host:15672 (default: the "
        "AMQP URL's host and credentials on port 15672)",
    )
    parser.add_argument(
        "--delay-exchange",
        default=DEFAULT_DELAY_EXCHANGE,
        help="the delay_exchange the services use (default: %(default)s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON on stdout, for scripts"
    )


def management_url_for(amqp_url: str, management_url: str | None) -> str:
    """``management_url``, or the AMQP URL's credentials and host on port 15672."""
    if management_url:
        return management_url
    parts = urllib.parse.urlsplit(amqp_url)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    netloc = (
        f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
        f"@{parts.hostname or 'localhost'}:15672"
    )
    return f"http://{netloc}"


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (``/`` when it names none)."""
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


class ManagementOff(CliError):
    """The management API does not answer; commands that can fall back to AMQP
    catch this one."""


class Management:
    """A small client of RabbitMQ's management HTTP API (GET only), on urllib.

    Its errors are :class:`CliError`\\ s: :class:`ManagementOff` (nothing answers
    at the URL, exit 5), bad credentials (401, exit 4), a name the broker does not
    know (404, exit 6).
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        user = urllib.parse.unquote(parts.username or "guest")
        password = urllib.parse.unquote(parts.password or "guest")
        self.url = url
        self.base = _redacted(url).rstrip("/")
        self.timeout = timeout
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._authorization = f"Basic {login}"
        self.user = user

    def get(self, path: str, **query: str) -> Any:
        """``GET /api/{path}``, decoded from JSON."""
        url = f"{self.base}/api/{path}"
        if query:
            url = f"{url}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(  # noqa: S310 - the user's own broker
            url, headers={"Authorization": self._authorization}
        )
        try:
            with urllib.request.urlopen(  # noqa: S310
                request, timeout=self.timeout
            ) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                what = (
                    f"the management API at {self.base} refused user {self.user!r} "
                    f"(HTTP {error.code})"
                )
                todo = (
                    "Check the user and password in --management-url (or --url), "
                    "and that the user has the management tag"
                )
                raise CliError(what, todo, Exit.ACCESS) from error
            if error.code == HTTPStatus.NOT_FOUND:
                what = f"the broker has no {urllib.parse.unquote(path)!r}"
                todo = "Check the name and the virtual host (--vhost)"
                raise CliError(what, todo, Exit.UNKNOWN) from error
            what = f"the management API at {self.base} answered HTTP {error.code}"
            todo = "Look at the broker's log"
            raise CliError(what, todo, Exit.UNREACHABLE) from error
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            what = f"no management API answers at {self.base} ({reason})"
            todo = (
                "Enable it (rabbitmq-plugins enable rabbitmq_management) or pass "
                "--management-url"
            )
            raise ManagementOff(what, todo, Exit.NO_MANAGEMENT) from error

    def overview(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("overview")
        return answer

    def queues(self, vhost: str) -> list[dict[str, Any]]:
        """Every queue of ``vhost``: name, type, arguments, messages, policy."""
        try:
            answer: list[dict[str, Any]] = self.get(
                f"queues/{quoted(vhost)}",
                columns="name,type,arguments,messages,effective_policy_definition",
            )
        except CliError as error:
            if error.code != Exit.UNKNOWN:
                raise
            what = f"the broker has no virtual host {vhost!r}"
            todo = "Check --vhost (or the path of --url)"
            raise CliError(what, todo, Exit.UNKNOWN) from error
        return answer

    def queue(self, vhost: str, name: str) -> dict[str, Any]:
        """One queue of ``vhost``: its type, arguments, messages..."""
        answer: dict[str, Any] = self.get(f"queues/{quoted(vhost)}/{quoted(name)}")
        return answer

    def bindings_from(self, vhost: str, exchange: str) -> list[dict[str, Any]]:
        """The bindings whose source is ``exchange``."""
        answer: list[dict[str, Any]] = self.get(
            f"exchanges/{quoted(vhost)}/{quoted(exchange)}/bindings/source"
        )
        return answer


def quoted(name: str) -> str:
    """``name`` as one segment of a management API path."""
    return urllib.parse.quote(name, safe="")


def management_for(args: argparse.Namespace, *, timeout: float = 10.0) -> Management:
    """The management API the command line's options name. One guessed from
    ``--url`` (no ``--management-url``) must be the broker's at ``--url``: its AMQP
    listeners include that port (an explicit one is trusted: behind a port mapping
    the listener's port is not the one the client sees).

    Raises :class:`ManagementOff` when it does not answer.
    """
    management = Management(
        management_url_for(args.url, args.management_url), timeout=timeout
    )
    overview = management.overview()
    if args.management_url:
        return management
    listeners = overview.get("listeners") or []
    ports = {
        listener.get("port")
        for listener in listeners
        if str(listener.get("protocol", "")).startswith("amqp")
    }
    port = urllib.parse.urlsplit(args.url).port or 5672
    if ports and port not in ports:
        what = (
            f"the management API at {management.base} belongs to a broker whose "
            f"AMQP port is {', '.join(map(str, sorted(ports)))}, not {port}"
        )
        todo = "Pass --management-url, the management API of the broker at --url"
        raise CliError(what, todo, Exit.USAGE)
    return management


async def connect(url: str, *, timeout: float = 10.0) -> AbstractConnection:  # noqa: ASYNC109
    """An AMQP connection; the reasons it fails as :class:`CliError`\\ s."""
    shown = _redacted(url)
    for name in ("aio_pika", "aiormq"):  # their failure is said once, below
        logging.getLogger(name).addHandler(logging.NullHandler())
    try:
        return await aio_pika.connect(url, timeout=timeout)
    except ProbableAuthenticationError as error:
        what = f"the broker at {shown} refused the credentials ({error})"
        todo = "Check the user and password in --url"
        raise CliError(what, todo, Exit.ACCESS) from error
    except AMQPError as error:
        if "Connection.Close" not in str(error):
            raise _unreachable(shown, error) from error
        vhost = vhost_of(url)
        what = f"the broker at {shown} closed the connection on opening {vhost!r}"
        todo = (
            "Check the virtual host (the path of --url) exists and the user may use it"
        )
        raise CliError(what, todo, Exit.ACCESS) from error
    except (OSError, TimeoutError) as error:
        raise _unreachable(shown, error) from error


def _unreachable(shown: str, error: BaseException) -> CliError:
    what = f"no broker answers at {shown} ({error or type(error).__name__})"
    todo = "Check --url (or $AIO_BACKOFF_AMQP_URL) and that RabbitMQ runs there"
    return CliError(what, todo, Exit.UNREACHABLE)


@dataclass(frozen=True)
class Held:
    """One message read from a queue and given back (see :func:`look`)."""

    queue: str
    routing_key: str
    headers: dict[str, Any]
    message_id: str | None
    redelivered: bool


async def queue_size(connection: AbstractConnection, queue: str) -> int | None:
    """The ready messages of ``queue`` (a passive declare); None if it does not
    exist."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        return None
    finally:
        if not channel.is_closed:
            await channel.close()
    return declared.declaration_result.message_count or 0


async def look(
    connection: AbstractConnection, queue: str, limit: int
) -> list[Held] | None:
    """Up to ``limit`` messages of ``queue``, head first, left where they were.

    Each is taken with ``basic.get`` and not acknowledged, and the channel is then
    closed: the broker puts them back in their places, as it does with a closed
    channel's unacked messages. None is acked, nacked or rejected, so none is lost
    or copied. They come back with ``redelivered`` set, and none can expire (or
    move on to the next ladder level) while it is held: a wait that ends meanwhile
    ends when the channel closes. A quorum queue counts the return toward its
    delivery limit: check :func:`unreadable` first. None: no such queue.
    """
    channel = await connection.channel()
    held: list[Held] = []
    try:
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return None
        while len(held) < limit:
            message = await declared.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(
                Held(
                    queue=queue,
                    routing_key=message.routing_key or "",
                    headers=dict(message.headers or {}),
                    message_id=message.message_id,
                    redelivered=bool(message.redelivered),
                )
            )
    finally:
        if not channel.is_closed:
            await channel.close()  # gives back every message taken, unacked
    return held


def unreadable(queue: dict[str, Any], major_version: int | None) -> str | None:
    """Why :func:`look` must not read ``queue`` (a management API queue), if so.

    A quorum queue counts every message given back toward its delivery limit, a
    channel's close included (measured on RabbitMQ 3.10.8, 4.0.5 and 4.3.6), and
    dead-letters a message past it: a quorum ladder level would send the copy on to
    the next level before its wait ends. So a quorum queue is read only when it has
    no limit: no ``x-delivery-limit`` (or ``delivery-limit`` policy) on RabbitMQ
    3.x, a negative one on 4.x (where the default is 20).
    """
    if queue.get("type") != "quorum":
        return None
    policy = queue.get("effective_policy_definition") or {}
    arguments = queue.get("arguments") or {}
    limits = [
        value
        for value in (arguments.get("x-delivery-limit"), policy.get("delivery-limit"))
        if isinstance(value, int)
    ]
    if limits:
        limit: int | None = min(limits)
    elif major_version is None or major_version >= 4:
        limit = 20
    else:
        limit = None
    if limit is None or limit < 0:
        return None
    return (
        f"quorum queue with a delivery limit of {limit}: every look would count "
        "toward it, so only its size is shown"
    )
