"""``Backoff`` for nameko services, and the extension that publishes delayed copies.

The names here are the ones nameko-amqp-retry 0.7.1 had in its ``backoff`` module, so
a suite that patches them keeps working: ``EXPIRY_GRACE_PERIOD`` (read whenever a delay
queue is declared) and ``random`` (whose ``gauss`` draws the jitter).

The retry decision itself (count, delay, headers, delay queue) comes from the sans-IO
core, :func:`aio_backoff.plan_retry`; this module only carries it out with kombu.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import NotFound  # type: ignore[import-untyped]
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import ChannelError
from kombu.pools import producers
from nameko.amqp.publish import UndeliverableMessage
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_RETRY_POLICY,
    DEFAULT_TRANSPORT_OPTIONS,
    LOGIN_METHOD_CONFIG_KEY,
    PERSISTENT,
)
from nameko.extensions import SharedExtension

import aio_backoff
from aio_backoff.core import (
    DEFAULT_EXCHANGE,
    EXPIRY_GRACE_PERIOD_MS,
    KEPT_PROPERTIES,
    DelayQueue,
    LeaseBook,
    RetryPlan,
    delay_queue_name,
    parked_headers,
    parking_queue_name,
    plan_retry,
    round_to_nearest,
)

__all__ = [
    "EXPIRY_GRACE_PERIOD",
    "Backoff",
    "BackoffPublisher",
    "get_backoff_queue_name",
    "round_to_nearest",
]

log = logging.getLogger("nameko_bridge").getChild("backoff")

EXPIRY_GRACE_PERIOD = EXPIRY_GRACE_PERIOD_MS
"""ms a delay queue outlives its delay (its ``x-expires`` is delay + this). Read each
time a retry is planned, so tests may patch it small."""


def get_backoff_queue_name(expiration: int) -> str:
    """``backoff--{expiration}ms``: the delay queue for ``expiration`` ms."""
    return delay_queue_name(expiration)


class Backoff(aio_backoff.Backoff):
    """Raise in a nameko entrypoint to have the message delivered again later.

    The same exception as :class:`aio_backoff.Backoff` (this is a subclass; an
    ``aio_backoff.Backoff`` raised in an entrypoint works as well), with the jitter
    drawn from this module's ``random``, so that patching
    ``nameko_bridge.backoff.random`` controls it.
    """

    class Expired(aio_backoff.Backoff.Expired):
        """The core's ``Backoff.Expired`` under the name nameko-amqp-retry gave it.

        A subclass, so ``except aio_backoff.Backoff.Expired`` catches it; its own
        name (``nameko_bridge.backoff.Backoff.Expired``) is what tracebacks print
        and what an RPC caller's ``RemoteError.exc_path`` says
        (``nameko_bridge.backoff.Expired``), as they did with the old import path.
        Every nameko entrypoint reports this class, also for an ``aio_backoff.Backoff``
        raised in it (see :func:`as_nameko_expired`).
        """

    @classmethod
    def _gauss(cls, mu: float, sigma: float) -> float:
        return random.gauss(mu, sigma)


def as_nameko_expired(expired: aio_backoff.Backoff.Expired) -> Backoff.Expired:
    """``expired`` as a :class:`Backoff.Expired` of this module.

    Returned unchanged when it already is one; otherwise (the core's class, from an
    ``aio_backoff.Backoff`` raised in a nameko entrypoint) a copy with the same
    message, attributes, cause chain and traceback.
    """
    if isinstance(expired, Backoff.Expired):
        return expired
    converted = Backoff.Expired(*expired.args)
    converted.__dict__.update(vars(expired))  # retries, limit, max_delay_ms, notes
    converted.__cause__ = expired.__cause__
    converted.__context__ = expired.__context__
    converted.__suppress_context__ = expired.__suppress_context__
    return converted.with_traceback(expired.__traceback__)


def _expiration_seconds(delay_ms: int) -> float:
    """The delay in the seconds kombu wants; kombu truncates ``seconds * 1000`` to an
    int, so half a millisecond is added to land on ``delay_ms`` exactly."""
    return (delay_ms + 0.5) / 1000


def _copy_properties(message: Any) -> dict[str, Any]:
    """The properties of ``message`` that a copy keeps (``KEPT_PROPERTIES``).

    The body is republished as received, so its content type and encoding go along;
    a message that had none is marked as raw bytes (kombu's ``application/data``),
    which is also how kombu reads a message without a content type.
    """
    received = message.properties or {}
    properties = {
        name: received[name]
        for name in KEPT_PROPERTIES
        if received.get(name) is not None
    }
    if "content_type" not in properties:
        properties["content_type"] = "application/data"
        properties["content_encoding"] = "binary"
    return properties


class BackoffPublisher(SharedExtension):  # type: ignore[misc]
    """Publishes delayed copies of messages whose entrypoint raised ``Backoff``.

    One per container, shared by its entrypoints. Copies go out through kombu's
    producer pool for this container's broker (the pool nameko's
    :class:`~nameko.amqp.publish.Publisher` uses too, with the same options) with
    ``mandatory`` delivery and publisher confirms. A delay queue is declared only
    when this publisher's :class:`~aio_backoff.LeaseBook` says its last declare is
    older than half the grace period; a copy that comes back unroutable (the queue
    was deleted) is declared and published once more, and if it is unroutable again
    :class:`~nameko.amqp.publish.UndeliverableMessage` is raised.
    """

    exchange_name: str = DEFAULT_EXCHANGE

    def __init__(self) -> None:
        super().__init__()
        self.lease_book = LeaseBook(clock=time.monotonic)
        self._exchange = Exchange(  # type: ignore[no-untyped-call]
            name=self.exchange_name, type="headers", durable=True
        )
        self._connection: Connection | None = None
        # (delay ms, exchange, grace ms) -> the kombu queue make_queue() built
        self._queues: dict[tuple[int, str, int], Queue] = {}

    @property
    def exchange(self) -> Exchange:
        """The durable headers exchange delayed copies are published to."""
        return self._exchange

    @property
    def connection(self) -> Connection:
        """The kombu connection (unopened) whose producer pool publishes the copies.

        Made on first use, with the options nameko's ``Publisher`` would use for
        this container (so both share one pool); kept, so that a retry does not
        parse the broker URI again.
        """
        if self._connection is None:
            config = self.container.config
            self._connection = Connection(  # type: ignore[no-untyped-call]
                config[AMQP_URI_CONFIG_KEY],
                transport_options={
                    **DEFAULT_TRANSPORT_OPTIONS,
                    "confirm_publish": True,
                },
                ssl=config.get(AMQP_SSL_CONFIG_KEY),
                login_method=config.get(LOGIN_METHOD_CONFIG_KEY),
            )
        return self._connection

    def make_queue(self, expiration: int) -> Queue:
        """The kombu queue that holds copies delayed by ``expiration`` ms.

        Built once per delay, exchange and ``EXPIRY_GRACE_PERIOD`` and then reused
        (kombu binds a copy of it when declaring, never the queue itself).
        """
        key = (expiration, self.exchange.name, EXPIRY_GRACE_PERIOD)
        queue = self._queues.get(key)
        if queue is None:
            topology = DelayQueue(
                delay_ms=expiration,
                exchange=self.exchange.name,
                grace_ms=EXPIRY_GRACE_PERIOD,
            )
            queue = self._queues[key] = Queue(  # type: ignore[no-untyped-call]
                name=topology.name,
                exchange=self.exchange,
                binding_arguments=topology.binding_arguments,
                queue_arguments=topology.arguments,
                durable=True,
            )
        return queue

    def republish(
        self,
        backoff_exc: aio_backoff.Backoff,
        message: Any,
        target_queue: str,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> RetryPlan:
        """Publish a delayed copy of ``message`` that comes back to ``target_queue``.

        ``headers`` (default: the message's own) are the headers the copy starts
        from. Raises ``Backoff.Expired`` when the retries are spent and
        ``UndeliverableMessage`` when the copy cannot be placed. Never settles
        ``message``.
        """
        plan = plan_retry(
            backoff_exc,
            message.headers if headers is None else headers,
            target_queue=target_queue,
            exchange=self.exchange.name,
            grace_ms=EXPIRY_GRACE_PERIOD,
        )
        queue = self.make_queue(plan.delay_ms)
        self._publish_copy(message, plan, queue)
        log.info(
            "retry #%r (limit %s) for queue %r in %r ms via %r",
            plan.retry_number,
            "none" if plan.limit is None else plan.limit,
            target_queue,
            plan.delay_ms,
            queue.name,
        )
        return plan

    def _publish_copy(self, message: Any, plan: RetryPlan, queue: Queue) -> None:
        lease = plan.delay_queue
        properties = _copy_properties(message)
        failure: Exception | None = None
        for attempt in (1, 2):
            # declaring the queue declares its exchange and binding too. The lease
            # is recorded once the declare is confirmed, dated from before it; until
            # then other workers declare as well (harmless) instead of racing ahead.
            declaring = attempt == 2 or self.lease_book.needs_declare(lease)
            started = self.lease_book.now()
            try:
                self._publish_confirmed(
                    message.body,
                    exchange=self.exchange,
                    routing_key=plan.routing_key,
                    headers=plan.headers,
                    expiration=_expiration_seconds(plan.delay_ms),
                    declare=[queue] if declaring else [],
                    properties=properties,
                )
            except (UndeliverableMessage, NotFound) as error:
                # NotFound: the exchange itself was deleted since we declared it
                failure = error
            except BaseException:
                self.lease_book.forget(lease)
                raise
            else:
                if declaring:
                    self.lease_book.declared(lease, at=started)
                return
            self.lease_book.forget(lease)
            if attempt == 1:
                log.warning(
                    "delayed copy for queue %r came back unroutable from exchange %r "
                    "(%r); declaring delay queue %r again and publishing once more",
                    plan.routing_key,
                    self.exchange.name,
                    failure,
                    queue.name,
                )
        msg = (
            f"the delayed copy of a message for queue {plan.routing_key!r} "
            f"(retry #{plan.retry_number}, {plan.delay_ms} ms) came back unroutable "
            f"from exchange {self.exchange.name!r}, also after declaring delay queue "
            f"{queue.name!r} again; the original goes back to its queue. Check that "
            "the delay queue is bound to the exchange with the binding arguments of "
            "docs/protocol.md and that no policy rejects it."
        )
        raise UndeliverableMessage(msg) from failure

    def _publish_confirmed(
        self,
        body: Any,
        *,
        exchange: Exchange | str,
        routing_key: str,
        headers: dict[str, Any],
        expiration: float | None,
        declare: list[Queue],
        properties: dict[str, Any],
    ) -> None:
        """Publish to ``exchange``, mandatory, and wait for the broker's confirm.

        What nameko's ``Publisher.publish`` does for a copy (delayed or parked),
        without rebuilding the kombu connection on each call: a pooled producer,
        persistent unless ``properties`` say otherwise, retried on connection errors
        with nameko's ``DEFAULT_RETRY_POLICY``. Raises ``UndeliverableMessage`` when
        the broker returns the copy as unroutable.
        """
        options = {"delivery_mode": PERSISTENT, "priority": 0}
        options.update(properties)
        with producers[self.connection].acquire(block=True) as producer:
            try:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=headers,
                    expiration=expiration,
                    declare=declare,
                    mandatory=True,
                    serializer="json",
                    retry=True,
                    retry_policy=DEFAULT_RETRY_POLICY,
                    **options,
                )
            except ChannelError as error:
                if "NO_ROUTE" in str(error):
                    raise UndeliverableMessage from error
                raise

    def park(
        self,
        message: Any,
        queue_name: str,
        error: BaseException,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``message`` to ``{queue_name}.parked`` (declared durable), confirmed.

        The copy keeps body and properties, and gains the headers ``backoff-error``
        and ``backoff-queue``. Returns the parking queue's name; raises
        ``UndeliverableMessage`` when the broker does not take the copy. Never
        settles ``message``.
        """
        parking = parking_queue_name(queue_name)
        self._publish_confirmed(
            message.body,
            exchange="",
            routing_key=parking,
            headers=parked_headers(
                message.headers if headers is None else headers,
                error=str(error),
                queue=queue_name,
            ),
            expiration=None,
            declare=[Queue(parking, durable=True)],  # type: ignore[no-untyped-call]
            properties=_copy_properties(message),
        )
        log.warning(
            "parked a message from queue %r in %r: %s", queue_name, parking, error
        )
        return parking
