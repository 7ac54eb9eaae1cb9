"""FastStream: delayed retries for a ``RabbitBroker``'s subscribers.

``BackoffMiddleware`` (``_middleware``) runs each handler under a
:class:`~aio_backoff.Retrier`'s ack table: a ``Backoff`` (or a ``retry_for``
exception) sends the original message back later through the delay topology, with
the same headers as every other aio-backoff consumer. What it needs to know of a
FastStream subscriber (its queue's name, its ack policy) is in ``_subscribers``.
Supported: FastStream 0.6 and 0.7 (docs/faststream.md). Nothing else in
aio_backoff imports this package or FastStream.
"""

try:
    import faststream.rabbit  # noqa: F401
except ImportError as error:  # pragma: no cover - the extra is installed in tests
    msg = (
        f"aio_backoff.faststream needs FastStream with RabbitMQ support ({error}): "
        'pip install "aio-backoff[faststream]"'
    )
    raise ImportError(msg) from error

from ._middleware import BackoffMiddleware

__all__ = ["BackoffMiddleware"]
