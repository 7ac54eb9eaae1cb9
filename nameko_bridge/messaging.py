"""nameko's ``@consume`` entrypoint, retried with ``Backoff``.

A delayed copy comes back to the queue the message was consumed from (through the
default exchange), so only this consumer sees it again, not the other queues bound to
the same exchange. See :mod:`nameko_bridge._entrypoints` for how messages are settled.
"""

from __future__ import annotations

from typing import Any

from nameko.messaging import Consumer as NamekoConsumer

from ._compat import message_settler
from ._entrypoints import (
    ExcInfo,
    backoff_in,
    check_on_expired,
    expect_backoff_exception,
    retry_headers,
    retry_later,
)
from .backoff import Backoff, BackoffPublisher

__all__ = ["Backoff", "Consumer", "consume"]


class Consumer(NamekoConsumer):  # type: ignore[misc]
    """nameko's ``Consumer``; an entrypoint that raises ``Backoff`` is retried later.

    ``on_expired``: what happens to a message whose retries are spent. ``"raise"``
    (the default, as nameko-amqp-retry): the entrypoint's result is
    ``Backoff.Expired`` and the message is acked. ``"park"``: the same, but a copy is
    first kept in the durable queue ``{queue}.parked`` for a person to inspect.
    """

    backoff_publisher = BackoffPublisher()

    def __init__(self, *args: Any, on_expired: str = "raise", **kwargs: Any) -> None:
        kwargs["expected_exceptions"] = expect_backoff_exception(
            kwargs.pop("expected_exceptions", ())
        )
        self.on_expired = check_on_expired(on_expired)
        super().__init__(*args, **kwargs)

    def handle_result(
        self,
        message: Any,
        worker_ctx: Any,
        result: Any = None,
        exc_info: ExcInfo | None = None,
    ) -> tuple[Any, ExcInfo | None]:
        backoff = backoff_in(exc_info)
        if backoff is None:
            return super().handle_result(message, worker_ctx, result, exc_info)  # type: ignore[no-any-return]

        headers = retry_headers(message, worker_ctx)
        queue_name = self.queue.name
        expired = retry_later(
            self, message, backoff, target_queue=queue_name, headers=headers
        )
        if expired is None:
            return result, exc_info

        settler = message_settler(self)
        if self.on_expired == "park":
            try:
                self.backoff_publisher.park(
                    message, queue_name, expired[1], headers=headers
                )
            except BaseException:
                settler.requeue_message(message)
                raise
        settler.ack_message(message)
        return None, expired


consume = Consumer.decorator
