"""``verify``: what a broker can do for the delay topologies, asked of the broker.

It reads the broker's version from the connection, declares (and deletes) a
quorum queue with the arguments of a quorum ladder level, reads the feature flags
from the management API when given its URL, and tries an ``x-delayed-message``
exchange on a connection of its own (RabbitMQ 3.x closes the whole connection when
it does not know the type). Nothing is left behind on the broker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika

from ..core._ladder import Ladder
from ..core._plugin import DELAYED_EXCHANGE_TYPE, DelayedExchange, plugin_unsupported

__all__ = ["BrokerReport", "verify"]

_AT_LEAST_ONCE_SINCE = (3, 10)
"""Quorum queues with message TTL and at-least-once dead-lettering."""
_FLAG_FREE_SINCE = (4, 0)
"""From 4.0 every feature flag at-least-once needs is required, so always on."""
_FLAG = "stream_queue"
_NO_STALL_SINCE = (3, 12, 5)
"""Before this, a quorum queue's at-least-once dead-letter worker keeps asking the
dead node after a leader change (it retries every 180 s), so a ladder level stops
forwarding while that node is down (measured on 3.10.8; fixed upstream in 3.12.5)."""
"""The feature flag at-least-once dead-lettering needs on 3.10 to 3.13."""


def _version_tuple(version: str | None) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


@dataclass
class BrokerReport:
    """What :func:`verify` found; ``str()`` gives it line by line."""

    version: str | None
    quorum_queues: bool
    """A quorum ladder level could be declared."""
    at_least_once: bool | None
    """Quorum levels dead-letter at-least-once (``None``: unknown, see notes)."""
    plugin: bool | None
    """The delayed-message exchange can be declared (``None``: not checked)."""
    stalls_on_node_loss: bool | None = None
    """Quorum levels stop forwarding copies while a leader's node is down (RabbitMQ
    before 3.12.5): the copies are kept, but come back only once it is back."""
    feature_flags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ladder_survives_node_loss(self) -> bool:
        """Whether a quorum ladder keeps delivering copies on time through the loss
        of a cluster node here."""
        return (
            self.quorum_queues
            and bool(self.at_least_once)
            and self.stalls_on_node_loss is False
        )

    def __str__(self) -> str:
        def said(value: bool | None) -> str:
            return {True: "yes", False: "no", None: "unknown"}[value]

        lines = [
            f"RabbitMQ version:              {self.version or 'unknown'}",
            f"quorum ladder queues:          {said(self.quorum_queues)}",
            f"at-least-once dead-lettering:  {said(self.at_least_once)}",
            f"delayed-message plugin:        {said(self.plugin)}",
        ]
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


def version_of(server_properties: Mapping[str, Any] | None) -> str | None:
    """The broker's version, from the server properties it sent on connecting."""
    version = (server_properties or {}).get("version")
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    return version if isinstance(version, str) else None


def server_version(connection: aio_pika.abc.AbstractConnection) -> str | None:
    """The version of the broker ``connection`` is connected to."""
    transport = getattr(connection, "transport", None)
    return version_of(
        getattr(getattr(transport, "connection", None), "server_properties", None)
    )


def _feature_flags(management_url: str, timeout: float) -> dict[str, str]:
    parts = urllib.parse.urlsplit(management_url)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    netloc = parts.hostname or "localhost"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    request = urllib.request.Request(  # noqa: S310 - the user's own broker
        f"{base.rstrip('/')}/api/feature-flags",
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{user}:{password}".encode()).decode()
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        flags: list[dict[str, Any]] = json.load(response)
    return {str(flag["name"]): str(flag.get("state")) for flag in flags}


async def _probe_quorum(
    connection: aio_pika.abc.AbstractConnection, notes: list[str]
) -> bool:
    name = f"aio-backoff.verify.{uuid.uuid4().hex}"
    arguments = Ladder(name, "quorum").level_arguments(10)
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        notes.append(f"a quorum ladder queue could not be declared: {error}")
        return False
    finally:
        if not channel.is_closed:
            await channel.queue_delete(name)
            await channel.close()
    return True


async def _probe_plugin(url: str, version: str | None, notes: list[str]) -> bool:
    unsupported = plugin_unsupported(version)
    if unsupported is not None:
        notes.append(unsupported)
        return False
    name = DelayedExchange(f"aio-backoff.verify.{uuid.uuid4().hex}").name
    connection = await aio_pika.connect(url)  # 3.x closes it if the type is unknown
    try:
        channel = await connection.channel()
        await channel.declare_exchange(
            name,
            type=DELAYED_EXCHANGE_TYPE,
            auto_delete=True,
            arguments={"x-delayed-type": "direct"},
        )
        await channel.exchange_delete(name)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        notes.append(
            "the delayed-message-exchange plugin is not enabled "
            f"(rabbitmq-plugins enable rabbitmq_delayed_message_exchange): {error}"
        )
        return False
    finally:
        await connection.close()
    return True


async def verify(
    url: str,
    *,
    management_url: str | None = None,
    plugin: bool = True,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> BrokerReport:
    """Ask the broker at ``url`` what it can do for the delay topologies.

    - ``management_url`` (``http://user:password@host:15672``): where to read the
      feature flags; at-least-once dead-lettering needs ``stream_queue`` on
      RabbitMQ 3.10 to 3.13 (from 4.0 it is always on). Without it, the answer
      for those versions is "unknown".
    - ``plugin``: also try the delayed-message exchange.

    Leaves nothing behind. Raises only when the broker cannot be reached.
    """
    notes: list[str] = []
    async with asyncio.timeout(timeout):
        connection = await aio_pika.connect(url)
        try:
            version = server_version(connection)
            quorum = await _probe_quorum(connection, notes)
        finally:
            await connection.close()
        has_plugin = await _probe_plugin(url, version, notes) if plugin else None
    flags: dict[str, str] = {}
    at_least_once: bool | None
    since = _version_tuple(version)
    if since is None or not quorum:
        at_least_once = False if not quorum else None
    elif since[:2] < _AT_LEAST_ONCE_SINCE:
        at_least_once = False
        notes.append(
            f"RabbitMQ {version} has no at-least-once dead-lettering (3.10 or later "
            "has); quorum ladder copies could be lost while a node is down"
        )
    elif since[:2] >= _FLAG_FREE_SINCE:
        at_least_once = True
    elif management_url is None:
        at_least_once = None
        notes.append(
            f"on RabbitMQ {version}, at-least-once dead-lettering needs the "
            f"{_FLAG!r} feature flag: pass management_url to read it"
        )
    else:
        flags = await asyncio.to_thread(_feature_flags, management_url, timeout)
        at_least_once = flags.get(_FLAG) == "enabled"
        if not at_least_once:
            notes.append(
                f"feature flag {_FLAG!r} is {flags.get(_FLAG, 'missing')}: "
                f"enable it (rabbitmqctl enable_feature_flag {_FLAG}), or quorum "
                "levels dead-letter at most once"
            )
    stalls = None if since is None else since < _NO_STALL_SINCE
    if stalls and quorum:
        notes.append(
            f"RabbitMQ {version} is older than 3.12.5: while the node that leads a "
            "quorum ladder queue is down, that queue stops forwarding copies (they "
            "are kept, and move on once the node is back); upgrade for a ladder that "
            "delivers on time through a node loss"
        )
    return BrokerReport(
        version=version,
        stalls_on_node_loss=stalls,
        quorum_queues=quorum,
        at_least_once=at_least_once,
        plugin=has_plugin,
        feature_flags=flags,
        notes=notes,
    )
