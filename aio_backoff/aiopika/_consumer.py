"""The asyncio consumer side: run a handler and settle its message by the ack table.

:class:`Retrier` carries out :func:`aio_backoff.decide` (docs/reliability.md):

============================  ==========================================================
handler outcome               message
============================  ==========================================================
returns                       ack
raises ``Backoff`` (or a      delayed copy published (mandatory + confirm), *then* the
``retry_for`` exception)      original is acked
... copy not placed,          back on its queue after a growing pause; at the
transient                     ``FailurePolicy``'s try limit, dead-lettered or parked
... copy not placed,          dead-lettered or parked at once, the reason in
permanent                     ``backoff-error``; one ERROR line
... planning error            as a permanent failure (``BackoffConfigError``)
... limit spent               the final action (``on_expired``, default
                              :func:`~aio_backoff.dead_letter_or_park`), then
                              ``Backoff.Expired`` is raised out of ``process()``
... final action failed       back on its queue after a growing pause
raises anything else          ``reject(requeue=requeue_on_error)`` (default: no requeue)
cancelled (``CancelledError``)  ``nack(requeue=True)``, and the cancellation propagates
============================  ==========================================================

A message the handler already settled itself is not settled again. While the
publisher cannot publish at all, no new handler starts (the gate).
"""

from __future__ import annotations

import asyncio
import contextlib
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

from ..core._backoff import Backoff, BackoffConfigError, RetryFor, as_backoff
from ..core._outcome import FailurePolicy, Outcome, Settle
from ..core._topology import DEFAULT_EXCHANGE, EXPIRY_GRACE_PERIOD_MS
from ._expiry import (
    BUILT_IN_ACTIONS,
    ExpiredMessage,
    ExpiryAction,
    dead_letter_or_park,
    run_final_action,
)
from ._publisher import DEFAULT_CONFIRM_TIMEOUT_S, CopyNotPlaced, DelayedPublisher
from ._renames import UNSET, renamed
from ._settle import TransientFailures, keep, requeue

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
        publisher = self.retrier.publisher
        if not publisher.available:  # the gate: no handler while copies cannot go
            await publisher.wait_available()
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
            self.retrier.failures.settled(self.message)
            return False
        if not isinstance(exc, Exception):
            # CancelledError, KeyboardInterrupt, ...: put it back and propagate
            await requeue(self.message, self.queue)
            log.info(
                "requeued message %r on queue %r: the handler was interrupted (%r)",
                self.message.message_id,
                self.queue,
                exc,
            )
            return False
        backoff = self.policy.backoff_for(exc)
        if backoff is None:
            await self._reject(exc)
            return False
        await self._retry(backoff)
        return True

    async def _reject(self, error: Exception) -> None:
        requeue_on_error = self.policy.requeue_on_error
        if not self.message.processed:
            await self.message.reject(requeue=requeue_on_error)
        log.info(
            "message %r from queue %r %s after %s: %s",
            self.message.message_id,
            self.queue,
            "requeued" if requeue_on_error else "rejected",
            type(error).__name__,
            error,
        )

    async def _retry(self, backoff: Backoff) -> None:
        publisher = self.retrier.publisher
        try:
            plan = publisher.plan(self.message, backoff, target_queue=self.queue)
        except Backoff.Expired as expired:
            await self._expire(expired)
            raise
        except Exception as error:
            await self._failed(Outcome.PLANNING_ERROR, f"planning error: {error}")
            if isinstance(error, BackoffConfigError):
                raise
            raise BackoffConfigError(str(error)) from error
        try:
            await publisher.publish_copy(self.message, plan)
        except CopyNotPlaced as failure:
            await self._failed(failure.outcome, str(failure))
            raise
        if not self.message.processed:
            await self.message.ack()
        self.retrier.failures.settled(self.message)
        log.info(
            "message %r from queue %r: retry #%r (limit %r) in %r ms",
            self.message.message_id,
            self.queue,
            plan.retry_number,
            plan.limit,
            plan.delay_ms,
        )

    async def _failed(self, outcome: Outcome, reason: str) -> None:
        """Carry out the table's action for a failure of ours (not the handler's)."""
        failures = self.retrier.failures
        action, tries, pause = failures.decide(self.message, outcome)
        if action.settle is Settle.REQUEUE_LATER:
            log.log(
                action.level,
                "message %r from queue %r goes back to its queue in %.2f s (%s, "
                "try %r of %r): %s",
                self.message.message_id,
                self.queue,
                pause,
                outcome,
                tries,
                failures.policy.max_transient_tries or "unlimited",
                reason,
            )
            try:
                await failures.pause(pause)
            finally:  # also when cancelled: back on its queue now
                await requeue(self.message, self.queue)
            return
        try:
            done = await keep(
                self.message,
                queue=self.queue,
                queue_arguments=self.queue_arguments,
                publisher=self.retrier.publisher,
                reason=reason,
            )
        except Exception as error:
            if outcome is Outcome.FINAL_ACTION_FAILED:
                raise
            log.log(
                action.level,
                "message %r from queue %r: %s; keeping it failed: %s",
                self.message.message_id,
                self.queue,
                reason,
                error,
            )
            await self._failed(Outcome.FINAL_ACTION_FAILED, str(error))
            return
        failures.settled(self.message)
        log.log(
            action.level,
            "message %r from queue %r %s (%s): %s",
            self.message.message_id,
            self.queue,
            done,
            outcome,
            reason,
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
        except Exception as failure:
            await self._failed(
                Outcome.FINAL_ACTION_FAILED, f"its final action failed: {failure!r}"
            )
            raise
        except BaseException:
            await requeue(self.message, self.queue)
            raise
        if not self.message.processed:
            await self.message.ack()
        self.retrier.failures.settled(self.message)


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
        delay_exchange: str = DEFAULT_EXCHANGE,
        grace_ms: int = EXPIRY_GRACE_PERIOD_MS,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        failure_policy: FailurePolicy | None = None,
        exchange: str = UNSET,
    ) -> None:
        self.policy = RetryPolicy(
            backoff=backoff,
            retry_for=tuple(retry_for),
            on_expired=on_expired,
            requeue_on_error=requeue_on_error,
        )
        self.failures = TransientFailures(failure_policy)
        self.publisher = publisher or DelayedPublisher(
            channel,
            delay_exchange=renamed(
                "Retrier", "exchange", "delay_exchange", exchange, delay_exchange
            ),
            grace_ms=grace_ms,
            confirm_timeout=confirm_timeout,
            failure_policy=failure_policy,
        )
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

        in_flight = self._in_flight

        async def on_message(message: AbstractIncomingMessage) -> None:
            if self._stopping:  # delivered after the consumer was cancelled
                await requeue(message, name)
                return
            task = asyncio.current_task()
            if task is not None:
                in_flight.add(task)
            try:
                async with _Processing(self, message, queue, policy, name):
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
        tag = await queue.consume(callback, **consume_kwargs)
        self._consumers.append((queue, tag))
        return tag

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop gracefully: take no more messages, let handlers finish, then close.

        Cancels the consumers :meth:`consume` started; handlers in flight get
        ``timeout`` seconds to finish (and settle their messages); the rest are
        cancelled, which puts their messages back on their queues. Messages
        delivered after the cancel are put back unhandled. Then :meth:`close`.
        """
        self._stopping = True
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            with contextlib.suppress(Exception):  # its channel may be gone already
                await queue.cancel(tag)
        pending = set(self._in_flight)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
            log.warning(
                "stopped with %r handlers still running after %r s; their messages "
                "went back to their queues",
                len(pending),
                timeout,
            )
        await self.close()

    async def close(self) -> None:
        """Close the publisher's own connection (see :meth:`stop` to drain first)."""
        await self.publisher.close()
