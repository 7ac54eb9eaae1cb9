"""The publisher's own connection and its confirming channel, and the gate.

Copies are published on a connection of the publisher's own, opened (robust) from the
URL of the consumer's connection: a refusal can close that whole connection (about
20 confirmed publishes in flight to a deleted exchange make RabbitMQ close it with
``504 CHANNEL_ERROR``), and it must not take the consumer's with it.

The *gate* is open while the publisher can publish. A failure that means it cannot
publish at all (connection or channel down) closes it; a probe reopens the channel
with a growing pause and opens the gate again. Consumers wait at the gate before
running a handler instead of running handlers whose copies cannot be placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from ..core._outcome import FailurePolicy

__all__ = ["PublishingConnection"]

log = logging.getLogger("aio_backoff").getChild("republish")


class PublishingConnection:
    """Owns the publisher's connection, its confirming channel and the gate.

    ``source`` is any channel of the consumer's connection: its URL is used to open
    ours, on first use. ``url`` overrides it (for TLS options that are not in the
    URL, pass a URL that has them). ``open_timeout`` bounds each connect and
    channel open.
    """

    def __init__(
        self,
        source: AbstractChannel,
        *,
        url: str | None = None,
        open_timeout: float = 10.0,
        policy: FailurePolicy | None = None,
    ) -> None:
        self.source = source
        self.url = url
        self.open_timeout = open_timeout
        self.policy = FailurePolicy() if policy is None else policy
        self._connection: AbstractRobustConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self._probe: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the connection and channel -----------------------------------------------

    async def _url(self) -> str:
        if self.url is None:
            underlay = await self.source.get_underlay_channel()
            self.url = str(underlay.connection.url)
        return self.url

    async def _robust_connection(self) -> AbstractRobustConnection:
        connection = self._connection
        if connection is None or connection.is_closed:
            connection = await aio_pika.connect_robust(
                await self._url(), timeout=self.open_timeout
            )
            self._connection = connection
            log.debug("opened the publisher's own connection %r", connection)
        return connection

    async def channel(self) -> aiormq.abc.AbstractChannel:
        """The confirming channel, opened (again) when needed."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                async with asyncio.timeout(self.open_timeout):
                    connection = await self._robust_connection()
                    await connection.ready()
                    transport = connection.transport
                    if transport is None:  # closed under us while we waited
                        msg = "the publisher's connection closed while opening"
                        raise ConnectionError(msg)
                    self._channel = await transport.connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                log.debug("opened publishing channel %r", self._channel.number)
            return self._channel

    @contextlib.asynccontextmanager
    async def scratch_channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A short-lived channel for checks the broker may answer by closing it."""
        await self.channel()
        connection = self._connection
        assert connection is not None
        assert connection.transport is not None
        channel = await connection.transport.connection.channel()
        try:
            yield channel
        finally:
            if not channel.is_closed:
                await channel.close()

    # -- the gate -------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the gate is open (the publisher can publish, as far as known)."""
        return self._open.is_set()

    async def wait_open(self) -> None:
        """Return once the gate is open (at once in the usual case)."""
        if not self._open.is_set():
            await self._open.wait()

    def unavailable(self, reason: str) -> None:
        """The publisher cannot publish at all: close the gate until a probe can."""
        if self._closed or not self._open.is_set():
            return
        self._open.clear()
        log.warning(
            "publisher unavailable (%s): consumers wait until it is back", reason
        )
        self._probe = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        tries = 0
        while not self._closed:
            tries += 1
            await asyncio.sleep(self.policy.pause(tries))
            try:
                await self.channel()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - each try is logged
                log.warning(
                    "publisher still unavailable after %r tries: %r", tries, error
                )
                continue
            log.warning("publisher available again after %r tries", tries)
            break
        self._open.set()

    def retire_channel(self, channel: aiormq.abc.AbstractChannel, grace: float) -> None:
        """Publish on a fresh channel from now on, and close ``channel`` after
        ``grace`` seconds (the confirms of publishes still in flight on it).

        For a channel the broker nacked: measured on RabbitMQ 3.10, a channel whose
        publish to a quorum queue was nacked just after the queue's leader died
        goes on being nacked, while a fresh channel's publishes are taken.
        """
        if self._channel is not channel:
            return  # retired already, or another one by now
        self._channel = None

        async def close_later() -> None:
            await asyncio.sleep(grace)
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.warning("publishing channel %r nacked a copy: using a fresh one", channel)

    async def close(self) -> None:
        """Close the channel and the connection (a later publish opens them again)."""
        self._closed = True
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        self._open.set()
        channel, self._channel = self._channel, None
        connection, self._connection = self._connection, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()
        try:
            if connection is not None:
                await connection.close()
        finally:
            self._closed = False
