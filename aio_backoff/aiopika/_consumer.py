"""The asyncio consumer side: run a handler and settle its message by the ack table.

:class:`Retrier` turns what a handler does into what happens to its message:

============================  ==========================================================
handler outcome               message
============================  ==========================================================
returns                       ack
raises ``Backoff`` (or a      delayed copy published (mandatory + confirm), *then* the
``retry_for`` exception)      original is acked
... copy cannot be placed     original ``nack(requeue=True)``; error logged
... limit spent               the final action (``on_expired``, default
                              :func:`~aio_backoff.dead_letter_or_park`), then
                              ``Backoff.Expired`` is raised out of ``process()``
raises anything else          ``reject(requeue=requeue_on_error)`` (default: no requeue)
cancelled (``CancelledError``)  ``nack(requeue=True)``, and the cancellation propagates
============================  ==========================================================

A message the handler already settled itself is not settled again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    ConsumerTag,
)

from ..core._backoff import Backoff, RetryFor, as_backoff
from ..core._topology import DEFAULT_EXCHANGE, EXPIRY_GRACE_PERIOD_MS
from ._expiry import (
    BUILT_IN_ACTIONS,
    ExpiredMessage,
    ExpiryAction,
    dead_letter_or_park,
    run_final_action,
)
from ._publisher import CopyNotPlaced, DelayedPublisher

__all__ = ["Handler", "Retrier", "RetryPolicy"]

log = logging.getLogger("aio_backoff").getChild("consumer")

Handler = Callable[[AbstractIncomingMessage], Awaitable[Any]]
"""``async def handler(message: AbstractIncomingMessage) -> Any``."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a consumer treats its handler's exceptions.

    - ``backoff``: the ``Backoff`` subclass whose schedule and limit apply to
      ``retry_for`` exceptions and to a plain ``Backoff()`` raised by the handler
      (a raised subclass keeps its own settings);
    - ``retry_for``: exception types retried as ``backoff``;
    - ``on_expired``: the final action once the limit is spent;
    - ``requeue_on_error``: requeue the message on any other exception (default:
      reject it without requeue, like ``message.process()``).
    """

    backoff: type[Backoff] = Backoff
    retry_for: RetryFor = ()
    on_expired: ExpiryAction = dead_letter_or_park
    requeue_on_error: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.backoff, type) and issubclass(self.backoff, Backoff)):
            msg = f"backoff must be Backoff or a subclass of it, got {self.backoff!r}"
            raise TypeError(msg)
        retry_for = tuple(self.retry_for)
        for kind in retry_for:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                msg = (
                    f"retry_for must hold exception classes, got {kind!r} in "
                    f"{self.retry_for!r}"
                )
                raise TypeError(msg)
        object.__setattr__(self, "retry_for", retry_for)

    def override(
        self,
        *,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        requeue_on_error: bool | None = None,
    ) -> RetryPolicy:
        """This policy with the given (non-``None``) settings replaced."""
        if (
            backoff is None
            and retry_for is None
            and on_expired is None
            and requeue_on_error is None
        ):
            return self  # frozen: nothing to copy (the usual case, once a message)
        changes: dict[str, Any] = {
            "backoff": backoff,
            "retry_for": None if retry_for is None else tuple(retry_for),
            "on_expired": on_expired,
            "requeue_on_error": requeue_on_error,
        }
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
        )

    def backoff_for(self, error: BaseException) -> Backoff | None:
        """``error`` as a ``Backoff`` under this policy, or ``None`` if not retried."""
        backoff = as_backoff(error, self.retry_for, self.backoff)
        if type(backoff) is Backoff and self.backoff is not Backoff:
            # a plain Backoff() takes the consumer's schedule and limit
            converted = self.backoff(*backoff.args, delay_ms=backoff.delay_ms)
            converted.__cause__ = backoff
            return converted
        return backoff


def _queue_name(queue: AbstractQueue | str) -> str:
    name = queue if isinstance(queue, str) else queue.name
    if not name:
        msg = (
            "a retrying consumer needs the name of the queue its messages come "
            f"back to, got {queue!r}"
        )
        raise ValueError(msg)
    return name


class _Processing:
    """The ``async with retrier.process(message, queue=...)`` context."""

    __slots__ = ("_source", "message", "policy", "queue", "retrier")

    def __init__(
        self,
        retrier: Retrier,
        message: AbstractIncomingMessage,
        queue: AbstractQueue | str,
        policy: RetryPolicy,
        queue_name: str | None = None,
    ) -> None:
        """``queue_name`` is ``_queue_name(queue)`` when the caller has it already."""
        self.retrier = retrier
        self.message = message
        self.queue = _queue_name(queue) if queue_name is None else queue_name
        self._source = queue
        self.policy = policy

    @property
    def queue_arguments(self) -> dict[str, Any] | None:
        """The arguments of the queue the message came from, if known."""
        source = self._source
        return None if isinstance(source, str) else source.arguments

    async def __aenter__(self) -> AbstractIncomingMessage:
        return self.message

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None:
            if not self.message.processed:
                await self.message.ack()
            return False
        if not isinstance(exc, Exception):
            # CancelledError, KeyboardInterrupt, ...: put it back and propagate
            await self._requeue("the handler was interrupted", exc, logging.INFO)
            return False
        backoff = self.policy.backoff_for(exc)
        if backoff is None:
            await self._reject(exc)
            return False
        await self._retry(backoff)
        return True

    async def _requeue(
        self, why: str, error: BaseException, level: int = logging.ERROR
    ) -> None:
        """Put the message back on its queue (best effort) and log why."""
        if self.message.processed:
            return
        try:
            await self.message.nack(requeue=True)
        except Exception:
            log.exception(
                "could not requeue message %r on queue %r (%s: %r); the broker "
                "redelivers it when the channel closes",
                self.message.message_id,
                self.queue,
                why,
                error,
            )
        else:
            log.log(
                level,
                "requeued message %r on queue %r: %s (%r)",
                self.message.message_id,
                self.queue,
                why,
                error,
            )

    async def _reject(self, error: Exception) -> None:
        requeue = self.policy.requeue_on_error
        if not self.message.processed:
            await self.message.reject(requeue=requeue)
        log.info(
            "message %r from queue %r %s after %s: %s",
            self.message.message_id,
            self.queue,
            "requeued" if requeue else "rejected",
            type(error).__name__,
            error,
        )

    async def _retry(self, backoff: Backoff) -> None:
        publisher = self.retrier.publisher
        try:
            plan = await publisher.retry(self.message, backoff, target_queue=self.queue)
        except Backoff.Expired as expired:
            await self._expire(expired)
            raise
        except CopyNotPlaced as error:
            if not self.message.processed:
                await self.message.nack(requeue=True)
            log.error(  # noqa: TRY400 - the reason is in the message
                "message %r from queue %r goes back to its queue: %s",
                self.message.message_id,
                self.queue,
                error,
            )
            raise
        except BaseException as error:
            await self._requeue("publishing its delayed copy failed", error)
            raise
        if not self.message.processed:
            await self.message.ack()
        log.info(
            "message %r from queue %r: retry #%r (limit %r) in %r ms",
            self.message.message_id,
            self.queue,
            plan.retry_number,
            plan.limit,
            plan.delay_ms,
        )

    async def _expire(self, error: Backoff.Expired) -> None:
        expired = ExpiredMessage(
            message=self.message,
            queue=self.queue,
            queue_arguments=self.queue_arguments,
            error=error,
            publisher=self.retrier.publisher,
        )
        action = self.policy.on_expired
        if action not in BUILT_IN_ACTIONS:  # the built-in ones log what they did
            log.warning(
                "message %r from queue %r expired after %r retries (limit %r); "
                "calling on_expired %r",
                self.message.message_id,
                self.queue,
                error.retries,
                error.limit,
                action,
            )
        try:
            await run_final_action(action, expired)
        except BaseException as failure:
            await self._requeue("its final action failed", failure)
            raise
        if not self.message.processed:
            await self.message.ack()


class Retrier:
    """Runs handlers for a queue's messages and settles them by the ack table.

    ``channel`` is a channel of the connection to publish delayed copies on (the
    publisher opens its own channel there, see :class:`DelayedPublisher`); the
    other arguments are the default :class:`RetryPolicy`, which each
    :meth:`consume`, :meth:`wrap` and :meth:`process` call may override. Pass
    ``publisher`` to share one :class:`DelayedPublisher` (and its lease book).
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
        exchange: str = DEFAULT_EXCHANGE,
        grace_ms: int = EXPIRY_GRACE_PERIOD_MS,
    ) -> None:
        self.policy = RetryPolicy(
            backoff=backoff,
            retry_for=tuple(retry_for),
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        self.publisher = publisher or DelayedPublisher(
            channel, exchange=exchange, grace_ms=grace_ms
        )

    def process(
        self,
        message: AbstractIncomingMessage,
        *,
        queue: AbstractQueue | str,
        backoff: type[Backoff] | None = None,
        retry_for: Iterable[type[BaseException]] | None = None,
        on_expired: ExpiryAction | None = None,
        requeue_on_error: bool | None = None,
    ) -> _Processing:
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
        return _Processing(self, message, queue, policy)

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
        name = _queue_name(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                async with _Processing(self, message, queue, policy, name):
                    await handler(message)
            except Backoff.Expired:
                log.exception(
                    "message %r from queue %r expired", message.message_id, name
                )
            except CopyNotPlaced:
                pass  # logged with its reason when the original was requeued
            except Exception:
                log.exception(
                    "handler %r failed on message %r from queue %r",
                    getattr(handler, "__qualname__", handler),
                    message.message_id,
                    name,
                )

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

        Returns the consumer tag (for ``queue.cancel``).
        """
        if consume_kwargs.get("no_ack"):
            msg = (
                f"cannot retry messages consumed with no_ack=True from queue "
                f"{queue.name!r}: the broker has already forgotten them"
            )
            raise ValueError(msg)
        callback = self.wrap(
            handler,
            queue=queue,
            backoff=backoff,
            retry_for=retry_for,
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        return await queue.consume(callback, **consume_kwargs)

    async def close(self) -> None:
        """Close the publisher's channel."""
        await self.publisher.close()
