"""``Backoff`` for nameko services, and the extension that publishes delayed copies.

The names here are the ones nameko-amqp-retry 0.7.1 had in its ``backoff`` module, so
a suite that patches them keeps working: ``EXPIRY_GRACE_PERIOD`` (read whenever a delay
queue is declared; the ``grace_ms`` of the core) and ``random`` (whose ``gauss`` draws
the jitter).

The retry decision itself (count, delay, headers, delay queue) comes from the sans-IO
core, :func:`aio_backoff.plan_retry`; this module only carries it out with kombu.

Every publish here (delayed copies, parked copies) waits for the broker's confirm
at most :attr:`BackoffPublisher.confirm_timeout` seconds (default
:data:`DEFAULT_CONFIRM_TIMEOUT_S`; the container config key
``BACKOFF_CONFIRM_TIMEOUT`` overrides it): py-amqp's ``basic_publish_confirm``
takes kombu's ``confirm_timeout`` and raises ``socket.timeout`` when it passes, and
kombu then closes that pooled connection, so a late confirm cannot be taken for the
next publish's.
"""

from __future__ import annotations

import importlib
import logging
import random
import time
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import amqp.exceptions as amqp_errors  # type: ignore[import-untyped]
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import ChannelError, OperationalError
from kombu.pools import producers
from nameko.amqp.publish import UndeliverableMessage
from nameko.constants import (
    AMQP_SSL_CONFIG_KEY,
    AMQP_URI_CONFIG_KEY,
    DEFAULT_TRANSPORT_OPTIONS,
    LOGIN_METHOD_CONFIG_KEY,
    PERSISTENT,
)
from nameko.extensions import SharedExtension

from aio_backoff.core import (
    DEFAULT_DELAY_EXCHANGE,
    DEFAULT_GRACE_MS,
    KEPT_PROPERTIES,
    QUEUE_TYPES,
    DelayedExchange,
    DelayQueue,
    FailurePolicy,
    Ladder,
    LeaseBook,
    QueueType,
    RetryPlan,
    TopologyName,
    TransientTries,
    check_topology,
    delay_queue_name,
    parked_headers,
    parking_queue_name,
    plan_retry,
    round_to_nearest,
)
from aio_backoff.core import Backoff as CoreBackoff
from aio_backoff.core import _events as events
from aio_backoff.core._events import NO_HOOKS, Hooks, emit, retry_fields
from aio_backoff.core._plugin import PLUGIN_DELAY_HEADER, x_delay
from aio_backoff.core._trace import add_traceparent

from ._topologies import TopologyDeclarer

__all__ = [
    "CONFIRM_TIMEOUT_CONFIG_KEY",
    "DEFAULT_CONFIRM_TIMEOUT_S",
    "EXPIRY_GRACE_PERIOD",
    "QUEUE_TYPE_CONFIG_KEY",
    "TOPOLOGY_CONFIG_KEY",
    "Backoff",
    "BackoffPublisher",
    "get_backoff_queue_name",
    "is_transient",
    "round_to_nearest",
]

log = logging.getLogger("nameko_bridge").getChild("backoff")

EXPIRY_GRACE_PERIOD = DEFAULT_GRACE_MS
"""nameko-amqp-retry's name of the core's ``grace_ms``: ms a delay queue outlives its
delay (its ``x-expires`` is delay + this). Read each time a retry is planned, so tests
may patch it small."""


DEFAULT_CONFIRM_TIMEOUT_S = 10.0
"""Seconds a publish of a copy waits for the broker's confirm before it counts as a
transient failure (the message then goes back to its queue after a pause)."""

CONFIRM_TIMEOUT_CONFIG_KEY = "BACKOFF_CONFIRM_TIMEOUT"
"""Container config key that overrides :data:`DEFAULT_CONFIRM_TIMEOUT_S`."""

TOPOLOGY_CONFIG_KEY = "BACKOFF_TOPOLOGY"
"""Container config key: where delayed copies wait, ``"per-delay"`` (the default,
nameko-amqp-retry's), ``"ladder"`` or ``"plugin"`` (docs/topology.md)."""

HOOKS_CONFIG_KEY = "BACKOFF_HOOKS"
"""Container config key: an :class:`aio_backoff.Hooks`, or the ``"module:name"`` of
one, told of scheduled, expired, not-placed and parked copies
(docs/observability.md)."""

QUEUE_TYPE_CONFIG_KEY = "BACKOFF_QUEUE_TYPE"
"""Container config key: ``"classic"`` (the default) or ``"quorum"`` ladder queues."""

_RETRY_POLICY = {"max_retries": 1}
"""kombu's retry of one publish: once, on a fresh connection (a pooled connection
may have died since its last use). A failure after that is handled by the
entrypoints: a pause, then the message goes back to its queue."""

_TRANSIENT = (
    OperationalError,  # kombu's wrapper of a recoverable connection error
    amqp_errors.MessageNacked,
    amqp_errors.RecoverableChannelError,
    amqp_errors.ConnectionError,
    OSError,  # socket errors, and socket.timeout: the confirm did not come in time
)
_PERMANENT = (
    # the request itself was wrong: the broker closes the connection for these,
    # but a new connection gets the same answer
    amqp_errors.AMQPNotImplementedError,
    amqp_errors.ContentTooLarge,
    amqp_errors.FrameError,
    amqp_errors.FrameSyntaxError,
    amqp_errors.InvalidCommand,
    amqp_errors.InvalidPath,
    amqp_errors.NotAllowed,
)


def is_transient(error: BaseException) -> bool:
    """Whether a failed publish or declare can heal by itself.

    Transient: a closed or broken connection or channel, a confirm timeout, a nack
    from the broker. Everything else is permanent (the broker refused a declare or
    the copy, the copy came back unroutable after a fresh declare, a header cannot be
    encoded): trying again fails the same way.
    """
    return not isinstance(error, _PERMANENT) and isinstance(error, _TRANSIENT)


def get_backoff_queue_name(expiration: int) -> str:
    """``backoff--{expiration}ms``: the delay queue for ``expiration`` ms."""
    return delay_queue_name(expiration)


class Backoff(CoreBackoff):
    """Raise in a nameko entrypoint to have the message delivered again later.

    The same exception as :class:`aio_backoff.Backoff` (this is a subclass; an
    ``aio_backoff.Backoff`` raised in an entrypoint works as well), with the jitter
    drawn from this module's ``random``, so that patching
    ``nameko_bridge.backoff.random`` controls it.
    """

    class Expired(CoreBackoff.Expired):
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


def as_nameko_expired(expired: CoreBackoff.Expired) -> Backoff.Expired:
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


def message_id_of(message: Any) -> str | None:
    """The ``message_id`` property of a kombu message, if it has one."""
    properties = getattr(message, "properties", None) or {}
    value = properties.get("message_id")
    return value if isinstance(value, str) else None


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
    ``mandatory`` delivery and publisher confirms, each confirm awaited at most
    ``confirm_timeout`` seconds. A delay queue is declared only when this
    publisher's :class:`~aio_backoff.LeaseBook` says its last declare is older than
    half the grace period; a copy that comes back unroutable (the queue was
    deleted) is declared and published once more, and if it is unroutable again
    :class:`~nameko.amqp.publish.UndeliverableMessage` is raised.

    It also holds what the entrypoints need to wait out transient failures:
    ``failure_policy`` (an :class:`aio_backoff.core.FailurePolicy`: the pause before
    a message goes back to its queue, and how many tries before it is parked) and
    ``transient_tries`` (the per-message count).

    ``delay_exchange`` names the delay exchange (a subclass may set another);
    :attr:`exchange` is that exchange as kombu's ``Exchange``, as nameko-amqp-retry
    had it. ``exchange_name`` is the deprecated name of ``delay_exchange``.
    """

    delay_exchange: str = DEFAULT_DELAY_EXCHANGE
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S
    """Seconds a publish waits for its confirm (the container config key
    ``BACKOFF_CONFIRM_TIMEOUT`` overrides it)."""
    failure_policy: FailurePolicy = FailurePolicy()
    topology: TopologyName = "per-delay"
    """Where copies wait (the container config key ``BACKOFF_TOPOLOGY`` overrides
    it): ``"per-delay"`` keeps nameko-amqp-retry 0.7.1's queues, so that 0.7.1
    services sharing the queues keep counting."""
    queue_type: QueueType = "classic"
    """The ladder's queue type (config key ``BACKOFF_QUEUE_TYPE``)."""
    hooks: Hooks | None = None
    """Who is told what happens to the copies (config key ``BACKOFF_HOOKS``
    overrides it)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        old = cls.__dict__.get("exchange_name")
        if isinstance(old, str):  # a subclass still sets the deprecated name
            warnings.warn(
                f"{cls.__name__}.exchange_name = ... is deprecated; write "
                f"{cls.__name__}.delay_exchange = ...",
                DeprecationWarning,
                stacklevel=2,
            )
            cls.delay_exchange = old
            del cls.exchange_name

    def __init__(self) -> None:
        super().__init__()
        self.lease_book = LeaseBook(clock=time.monotonic)
        self.transient_tries = TransientTries()
        self._exchange = Exchange(  # type: ignore[no-untyped-call]
            name=self.delay_exchange, type="headers", durable=True
        )
        self._connection: Connection | None = None
        # (delay ms, delay exchange, grace ms) -> the kombu queue make_queue() built
        self._queues: dict[tuple[int, str, int], Queue] = {}
        self._declarer = TopologyDeclarer(self._fresh_connection)

    @property
    def exchange(self) -> Exchange:
        """The durable headers exchange delayed copies are published to
        (:attr:`delay_exchange`), as kombu's ``Exchange``."""
        return self._exchange

    def __dir__(self) -> list[str]:
        # nameko finds an extension's sub-extensions with inspect.getmembers, which
        # reads every attribute dir() names: the deprecated one would warn each time
        return [name for name in super().__dir__() if name != "exchange_name"]

    @property
    def exchange_name(self) -> str:
        """Deprecated name of :attr:`delay_exchange`."""
        warnings.warn(
            "BackoffPublisher.exchange_name is deprecated; write "
            "BackoffPublisher.delay_exchange",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.delay_exchange

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

    @property
    def confirm_timeout_s(self) -> float:
        """The confirm timeout in force: the container's config, else the class's."""
        container = getattr(self, "container", None)
        config = getattr(container, "config", None) or {}
        return float(config.get(CONFIRM_TIMEOUT_CONFIG_KEY, self.confirm_timeout))

    def _fresh_connection(self) -> Connection:
        """A new kombu connection like :attr:`connection` (closed on exit)."""
        return self.connection.clone()  # type: ignore[no-untyped-call,no-any-return]

    def _config(self) -> Mapping[str, Any]:
        container = getattr(self, "container", None)
        return getattr(container, "config", None) or {}

    @property
    def topology_in_force(self) -> TopologyName:
        """The topology in force: the container's config, else the class's."""
        value = self._config().get(TOPOLOGY_CONFIG_KEY, self.topology)
        try:
            return check_topology(value)
        except ValueError as error:
            msg = f"{TOPOLOGY_CONFIG_KEY}: {error}"
            raise ValueError(msg) from None

    @property
    def queue_type_in_force(self) -> QueueType:
        """The ladder's queue type in force: the container's config, else the
        class's."""
        value = self._config().get(QUEUE_TYPE_CONFIG_KEY, self.queue_type)
        if value not in QUEUE_TYPES:
            msg = (
                f"{QUEUE_TYPE_CONFIG_KEY} must be 'classic' or 'quorum', got {value!r}"
            )
            raise ValueError(msg)
        return value  # type: ignore[no-any-return]

    @property
    def hooks_in_force(self) -> Hooks:
        """The hooks in force: the container's config (``BACKOFF_HOOKS``), else
        the class's ``hooks``, else none."""
        resolved = self.__dict__.get("_hooks")
        if resolved is None:
            resolved = self._resolve_hooks()
            self.__dict__["_hooks"] = resolved
        return resolved

    def _resolve_hooks(self) -> Hooks:
        value = self._config().get(HOOKS_CONFIG_KEY, self.hooks)
        if value is None:
            return NO_HOOKS
        if isinstance(value, str):
            module, _, name = value.partition(":")
            try:
                value = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError) as error:
                msg = (
                    f"{HOOKS_CONFIG_KEY}: cannot import {value!r} ({error}); give "
                    "'module:name' of an aio_backoff.Hooks"
                )
                raise ValueError(msg) from None
        if not isinstance(value, Hooks):
            msg = f"{HOOKS_CONFIG_KEY} must be an aio_backoff.Hooks, got {value!r}"
            raise TypeError(msg)
        return value

    def setup(self) -> None:
        """Check the topology settings when the container starts."""
        _ = self.topology_in_force, self.queue_type_in_force, self.hooks_in_force

    def make_queue(self, expiration: int) -> Queue:
        """The kombu queue that holds copies delayed by ``expiration`` ms.

        Built once per delay, delay exchange and ``EXPIRY_GRACE_PERIOD`` and then
        reused (kombu binds a copy of it when declaring, never the queue itself).
        """
        key = (expiration, self.delay_exchange, EXPIRY_GRACE_PERIOD)
        queue = self._queues.get(key)
        if queue is None:
            topology = DelayQueue(*key)
            queue = self._queues[key] = Queue(  # type: ignore[no-untyped-call]
                name=topology.name,
                exchange=self.exchange,
                binding_arguments=topology.binding_arguments,
                queue_arguments=topology.arguments,
                durable=True,
            )
        return queue

    def plan(
        self,
        backoff_exc: CoreBackoff,
        headers: Mapping[str, Any] | None,
        target_queue: str,
    ) -> RetryPlan:
        """The core's plan for the next retry (raises ``Backoff.Expired`` when the
        retries are spent, ``ValueError``/``TypeError`` for a bad ``Backoff``)."""
        try:
            return plan_retry(
                backoff_exc,
                headers,
                target_queue=target_queue,
                delay_exchange=self.delay_exchange,
                grace_ms=EXPIRY_GRACE_PERIOD,
                topology=self.topology_in_force,
            )
        except CoreBackoff.Expired:
            hooks = self.hooks_in_force.expired
            if hooks:
                emit(
                    hooks,
                    events.expired(
                        backoff_exc,
                        headers,
                        queue=target_queue,
                        message_id=None,
                        delay_exchange=self.delay_exchange,
                    ),
                )
            raise

    def republish(
        self,
        backoff_exc: CoreBackoff,
        message: Any,
        target_queue: str,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> RetryPlan:
        """Publish a delayed copy of ``message`` that comes back to ``target_queue``.

        ``headers`` (default: the message's own) are the headers the copy starts
        from. Raises ``Backoff.Expired`` when the retries are spent and
        ``UndeliverableMessage`` (or the broker's error) when the copy cannot be
        placed. Never settles ``message``.
        """
        plan = self.plan(
            backoff_exc, message.headers if headers is None else headers, target_queue
        )
        self.publish_copy(message, plan)
        return plan

    def publish_copy(self, message: Any, plan: RetryPlan) -> None:
        """Publish the delayed copy of ``message`` that ``plan`` describes.

        The copy carries ``plan.headers`` and, when a span is current (OpenTelemetry
        installed), that span's ``traceparent`` and ``tracestate``, as the asyncio
        stack's copies do (:func:`aio_backoff.otel.retry_links`). Raises
        ``UndeliverableMessage`` when it comes back unroutable also after a fresh
        declare, or the error of the publish; never settles ``message``.
        """
        hooks = self.hooks_in_force
        headers = dict(plan.headers)
        add_traceparent(headers)
        try:
            if plan.topology == "per-delay":
                queue = self.make_queue(plan.delay_ms)
                self._publish_copy(message, plan, queue, headers)
                via = queue.name
            else:
                via = self._publish_routed_copy(message, plan, headers)
        except Exception as error:
            if hooks.not_placed:
                emit(
                    hooks.not_placed,
                    events.not_placed(
                        plan,
                        queue=plan.routing_key,
                        message_id=message_id_of(message),
                        permanent=not is_transient(error),
                        reason=str(error) or type(error).__name__,
                    ),
                )
            raise
        log.info(
            "retry #%r (limit %s) for queue %r in %r ms via %r",
            plan.retry_number,
            "none" if plan.limit is None else plan.limit,
            plan.routing_key,
            plan.delay_ms,
            via,
            extra=retry_fields(
                plan.routing_key,
                message_id_of(message),
                plan.retry_number,
                plan.limit,
                plan.delay_ms,
                outcome="retry placed",
            ),
        )
        if hooks.scheduled:
            emit(hooks.scheduled, events.scheduled(plan, message_id_of(message)))

    def _publish_routed_copy(
        self, message: Any, plan: RetryPlan, headers: Mapping[str, Any]
    ) -> str:
        """A copy with ``headers`` through the ladder or the plugin's exchange;
        returns where it went.

        Declared (once) and the target bound before the publish; the ladder's copy
        is mandatory and published once more after a fresh declare if it comes
        back; the plugin takes no ``mandatory``. Copies are persistent.
        """
        target = plan.routing_key
        headers = dict(headers)
        properties = {**_copy_properties(message), "delivery_mode": PERSISTENT}
        if plan.topology == "ladder":
            ladder = Ladder(self.delay_exchange, self.queue_type_in_force)
            exchange = ladder.entry(plan.delay_ms)
            routing_key = ladder.routing_key(plan.delay_ms, target)
            ensure = partial(self._declarer.ladder, ladder, target)
            source = ladder.deliver_exchange
        else:
            delayed = DelayedExchange(self.delay_exchange)
            exchange, routing_key = delayed.name, delayed.routing_key(target)
            headers[PLUGIN_DELAY_HEADER] = x_delay(plan.delay_ms)
            ensure = partial(self._declarer.plugin, delayed, target)
            source = delayed.name
        for attempt in (1, 2):
            ensure()
            try:
                self._publish_confirmed(
                    message.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=headers,
                    expiration=None,
                    declare=[],
                    properties=properties,
                    mandatory=plan.topology == "ladder",
                )
            except (UndeliverableMessage, amqp_errors.NotFound) as error:
                self._declarer.forget(source, target)
                if attempt == 2:
                    msg = (
                        f"the delayed copy of a message for queue {target!r} (retry "
                        f"#{plan.retry_number}, {plan.delay_ms} ms) could not be "
                        f"routed via {exchange!r}, also after declaring the "
                        f"{plan.topology} topology again"
                    )
                    raise UndeliverableMessage(msg) from error
            except BaseException:
                self._declarer.forget(source, target)
                raise
            else:
                break
        return exchange

    def _publish_copy(
        self, message: Any, plan: RetryPlan, queue: Queue, headers: dict[str, Any]
    ) -> None:
        """A copy with ``headers`` through the per-delay ``queue``, declared when
        its lease says so."""
        lease = plan.delay_queue
        assert lease is not None  # every per-delay plan has its delay queue
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
                    headers=headers,
                    expiration=_expiration_seconds(plan.delay_ms),
                    declare=[queue] if declaring else [],
                    properties=properties,
                )
            except (UndeliverableMessage, amqp_errors.NotFound) as error:
                # NotFound: the exchange itself was deleted since we declared it
                failure = error
            except BaseException:
                self.lease_book.forget(lease)
                raise
            else:
                if declaring:
                    self.lease_book.declared(lease, at=started)
                if attempt == 2 or self.lease_book.covers(lease):
                    return
                # confirmed later than the grace period after our last declare:
                # the queue may have expired with the copy in it. Once more, after
                # a declare (the message may come back twice, but is not lost).
                log.warning(
                    "delayed copy for queue %r confirmed too late to be sure delay "
                    "queue %r was still there; declaring it and publishing once more",
                    plan.routing_key,
                    queue.name,
                )
                self.lease_book.forget(lease)
                continue
            self.lease_book.forget(lease)
            if attempt == 1:
                log.warning(
                    "delayed copy for queue %r came back unroutable from exchange %r "
                    "(%r); declaring delay queue %r again and publishing once more",
                    plan.routing_key,
                    self.delay_exchange,
                    failure,
                    queue.name,
                )
        msg = (
            f"the delayed copy of a message for queue {plan.routing_key!r} "
            f"(retry #{plan.retry_number}, {plan.delay_ms} ms) came back unroutable "
            f"from exchange {self.delay_exchange!r}, also after declaring delay queue "
            f"{queue.name!r} again. Check that the delay queue is bound to the "
            "exchange with the binding arguments of docs/protocol.md and that no "
            "policy rejects it."
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
        mandatory: bool = True,
    ) -> None:
        """Publish to ``exchange``, mandatory, and wait for the broker's confirm.

        What nameko's ``Publisher.publish`` does for a copy (delayed or parked),
        without rebuilding the kombu connection on each call: a pooled producer,
        persistent unless ``properties`` say otherwise, tried once more on a fresh
        connection after a connection error, the confirm awaited at most
        :attr:`confirm_timeout_s`. Raises ``UndeliverableMessage`` when the broker
        returns the copy as unroutable. On any error kombu closes the pooled
        connection (a channel the broker closed, or a confirm that may still come,
        is not used again).
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
                    mandatory=mandatory,
                    serializer="json",
                    retry=True,
                    retry_policy=_RETRY_POLICY,
                    confirm_timeout=self.confirm_timeout_s,
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
        error: BaseException | str,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``message`` to ``{queue_name}.parked`` (declared durable), confirmed.

        The copy keeps body and properties, and gains the headers ``backoff-error``
        (``error``) and ``backoff-queue``. A parking queue that exists with other
        arguments is used as it is. Returns the parking queue's name; raises
        ``UndeliverableMessage`` (or the publish error) when the broker does not take
        the copy. Never settles ``message``.
        """
        parking = parking_queue_name(queue_name)
        publish = partial(
            self._publish_confirmed,
            message.body,
            exchange="",
            routing_key=parking,
            headers=parked_headers(
                message.headers if headers is None else headers,
                error=str(error),
                queue=queue_name,
            ),
            expiration=None,
            properties=_copy_properties(message),
        )
        try:
            publish(declare=[Queue(parking, durable=True)])  # type: ignore[no-untyped-call]
        except amqp_errors.PreconditionFailed as refused:
            log.warning(
                "parking queue %r exists with other arguments (%s); parking in it "
                "as it is",
                parking,
                refused,
            )
            publish(declare=[])
        hooks = self.hooks_in_force.parked
        if hooks:
            emit(
                hooks,
                events.Parked(
                    queue=queue_name,
                    message_id=message_id_of(message),
                    parking_queue=parking,
                    reason=str(error),
                ),
            )
        return parking

    def dead_letter_exchange_exists(self, name: str) -> bool:
        """Whether the exchange ``name`` exists (the default exchange always does).

        Asked before a message is rejected to its queue's dead-letter exchange: the
        broker drops a message whose dead-letter exchange does not exist.
        """
        if not name:
            return True
        with self.connection.clone() as connection:  # type: ignore[no-untyped-call]
            channel = connection.channel()
            try:
                channel.exchange_declare(name, "direct", passive=True)
            except amqp_errors.NotFound:
                return False
        return True
