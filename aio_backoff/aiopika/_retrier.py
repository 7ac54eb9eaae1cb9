"""The retrying consumer: :class:`Retrier` consumes queues, runs handlers through
:class:`~._processing.Processing` and stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)

from ..core._backoff import Backoff, BackoffConfigError
from ..core._events import Hooks
from ..core._ladder import QueueType
from ..core._outcome import FailurePolicy
from ..core._renames import UNSET, renamed
from ..core._topology import DEFAULT_DELAY_EXCHANGE, DEFAULT_GRACE_MS, TopologyName
from ._expiry import ExpiryAction, dead_letter_or_park
from ._lifecycle import drain
from ._policy import RetryPolicy
from ._processing import Processing, name_of
from ._publisher import (
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_TOPOLOGY,
    CopyNotPlaced,
    DelayedPublisher,
)
from ._settle import Settling, requeue

__all__ = ["Handler", "Retrier"]

log = logging.getLogger("aio_backoff").getChild("consumer")

Handler = Callable[[AbstractIncomingMessage], Awaitable[Any]]
"""``async def handler(message: AbstractIncomingMessage) -> Any``."""


class Retrier:
    """Runs handlers for a queue's messages and settles them by the ack table.

    ``channel`` is a channel of the connection to publish delayed copies on (the
    publisher opens its own channel there, see :class:`DelayedPublisher`); the
    other arguments are the default :class:`RetryPolicy`, which each
    :meth:`consume`, :meth:`wrap` and :meth:`process` call may override. Pass
    ``publisher`` to share one :class:`DelayedPublisher` (and its lease book).
    ``hooks`` (:class:`~aio_backoff.Hooks`) are told what happens to the copies
    (docs/observability.md); given with ``publisher``, they replace its hooks.
    """

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        backoff: type[Backoff] = Backoff,
        retry_for: Iterable[type[BaseException]] = (),
        on_expired: ExpiryAction = dead_letter_or_park,
        requeue_on_error: bool = False,
        publisher: DelayedPublisher | None = None,
        topology: TopologyName = DEFAULT_TOPOLOGY,
        queue_type: QueueType = "classic",
        delay_exchange: str = DEFAULT_DELAY_EXCHANGE,
        grace_ms: int = DEFAULT_GRACE_MS,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        exchange: str = UNSET,
        hooks: Hooks | None = None,
    ) -> None:
        self.policy = RetryPolicy(
            backoff=backoff,
            retry_for=tuple(retry_for),
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        self.publisher = publisher or DelayedPublisher(
            channel,
            topology=topology,
            queue_type=queue_type,
            delay_exchange=renamed(
                "Retrier", "exchange", "delay_exchange", exchange, delay_exchange
            ),
            grace_ms=grace_ms,
            confirm_timeout=confirm_timeout,
            failure_policy=failure_policy,
            hooks=hooks,
        )
        if hooks is not None:
            self.publisher.hooks = hooks
        self.settling = Settling(failure_policy, publisher=self.publisher, logger=log)
        """Carries out the ack table's failures for this retrier's messages."""
        self._consumers: list[tuple[AbstractQueue, ConsumerTag]] = []
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def process(
        self,
        message: AbstractIncomingMessage,
        *,
        queue: AbstractQueue | str,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        requeue_on_error: bool | None = None,
    ) -> Processing:
        """``async with retrier.process(message, queue=queue):`` like
        ``message.process()``, with retries.

        ``queue`` is the queue the message was consumed from (its copies come back
        there). A ``Backoff`` is swallowed once its copy is placed; on expiry the
        final action runs and ``Backoff.Expired`` is raised out of the block; a
        copy that cannot be placed raises ``CopyNotPlaced`` (the original is back
        on its queue); any other exception is re-raised after the message is
        rejected.
        """
        policy = self.policy.override(
            backoff=backoff,
            retry_for=retry_for,
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        return Processing(self, message, queue, policy)

    def wrap(
        self,
        handler: Handler,
        *,
        queue: AbstractQueue | str,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        requeue_on_error: bool | None = None,
    ) -> Handler:
        """``handler`` as a ``queue.consume`` callback that retries by the policy.

        Exceptions that :meth:`process` raises are logged at error level (with
        their traceback) and not re-raised; ``CancelledError`` propagates.
        """
        policy = self.policy.override(
            backoff=backoff,
            retry_for=retry_for,
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        name = name_of(queue)

        in_flight = self._in_flight

        async def on_message(message: AbstractIncomingMessage) -> None:
            if self._stopping:  # delivered after the consumer was cancelled
                await requeue(message, name)
                return
            task = asyncio.current_task()
            if task is not None:
                in_flight.add(task)
            try:
                async with Processing(self, message, queue, policy, name):
                    await handler(message)
            except Backoff.Expired:
                log.exception(
                    "message %r from queue %r expired", message.message_id, name
                )
            except (CopyNotPlaced, BackoffConfigError):
                pass  # logged with its reason when the message was settled
            except Exception:
                log.exception(
                    "handler %r failed on message %r from queue %r",
                    getattr(handler, "__qualname__", handler),
                    message.message_id,
                    name,
                )
            finally:
                in_flight.discard(task)

        on_message.__qualname__ = f"retrying({getattr(handler, '__qualname__', '?')})"
        return on_message

    async def consume(
        self,
        queue: AbstractQueue,
        handler: Handler,
        *,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        requeue_on_error: bool | None = None,
        **consume_kwargs: Any,
    ) -> ConsumerTag:
        """``queue.consume(self.wrap(handler, queue=queue, ...), **consume_kwargs)``.

        The first call declares the delay topology (:meth:`DelayedPublisher.declare`),
        so that a topology the broker cannot run fails here, with its reason, and
        each call binds its queue to it, so that no retry waits for that; a
        queue the topology cannot bring copies back to (a ladder target whose name
        is too long or has a ``*`` or ``#`` word, an exclusive queue with the
        ladder or the plugin) is refused here too (``ValueError``).
        Returns the consumer tag (for ``queue.cancel``).
        """
        if consume_kwargs.get("no_ack"):
            msg = (
                f"cannot retry messages consumed with no_ack=True from queue "
                f"{queue.name!r}: the broker has already forgotten them"
            )
            raise ValueError(msg)
        self.publisher.check_target(
            queue.name, exclusive=bool(getattr(queue, "exclusive", False))
        )
        await self.publisher.declare(targets=[queue.name])
        callback = self.wrap(
            handler,
            queue=queue,
            backoff=backoff,
            retry_for=retry_for,
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        tag = await queue.consume(callback, **consume_kwargs)
        self._consumers.append((queue, tag))
        return tag

    @property
    def hooks(self) -> Hooks:
        """Who is told what happens to the copies (its publisher's hooks)."""
        return self.publisher.hooks

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop gracefully: take no more messages, let handlers finish, then close.

        Cancels the consumers :meth:`consume` started; handlers in flight get
        ``timeout`` seconds to finish (and settle their messages); the rest are
        cancelled, which puts their messages back on their queues. Messages
        delivered after the cancel are put back unhandled. Then :meth:`close`.
        """
        self._stopping = True
        self.settling.stop_pausing()  # messages waiting out a pause go back now
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):  # its channel may be gone already
                await queue.cancel(tag)
        cancelled = await drain(self._in_flight, timeout)
        if cancelled:
            log.warning(
                "stopped with %r handlers still running after %r s; their messages "
                "went back to their queues",
                cancelled,
                timeout,
            )
        await self.close()

    async def close(self) -> None:
        """Close the publisher's own connection (see :meth:`stop` to drain first)."""
        await self.publisher.close()
