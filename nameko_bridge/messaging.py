"""nameko's ``@consume`` entrypoint, retried with ``Backoff``.

A delayed copy comes back to the queue the message was consumed from (through the
default exchange), so only this consumer sees it again, not the other queues bound to
the same exchange. See :mod:`nameko_bridge._entrypoints` for how messages are settled.
"""

from __future__ import annotations

from typing import Any

from nameko.messaging import Consumer as NamekoConsumer

from aio_backoff.core.nameko_wire import without_carried_delivery_keys

from ._compat import message_settler
from ._entrypoints import (
    ExcInfo,
    backoff_in,
    carry_out_backoff,
    check_on_expired,
    expect_backoff_exception,
    retry_headers,
    tell_came_back,
)
from .backoff import Backoff, BackoffPublisher

__all__ = ["Backoff", "Consumer", "consume"]

_DEAD_LETTER_EXCHANGE = "x-dead-letter-exchange"


class Consumer(NamekoConsumer):  # type: ignore[misc]
    """nameko's ``Consumer``; an entrypoint that raises ``Backoff`` is retried later.

    ``on_expired``: what happens to a message whose retries are spent; the
    entrypoint's result is ``Backoff.Expired`` with each choice.

    - ``"keep"`` (the default; ``"raise"`` is its old name): rejected to the
      queue's dead-letter exchange when the queue declares one
      (``x-dead-letter-exchange`` in its ``queue_arguments``) and it exists, else
      parked in the durable queue ``{queue}.parked``;
    - ``"park"``: always parked in ``{queue}.parked``;
    - ``"ack"``: acked and gone, as nameko-amqp-retry 0.7.1 did.
    """

    backoff_publisher = BackoffPublisher()

    def __init__(self, *args: Any, on_expired: str = "keep", **kwargs: Any) -> None:
        kwargs["expected_exceptions"] = expect_backoff_exception(
            kwargs.pop("expected_exceptions", ())
        )
        self.on_expired = check_on_expired(on_expired)
        super().__init__(*args, **kwargs)

    def unpack_message_headers(self, message: Any) -> dict[str, Any]:
        # called once per delivery, before the worker: a copy that came back
        tell_came_back(self, message, self.queue.name)
        # a caller's nameko.* context never brings a retry count or a method id
        return without_carried_delivery_keys(
            super().unpack_message_headers(message), message.headers
        )

    def handle_result(
        self,
        message: Any,
        worker_ctx: Any,
        result: Any = None,
        exc_info: ExcInfo | None = None,
    ) -> tuple[Any, ExcInfo | None]:
        backoff = backoff_in(exc_info)
        if backoff is None or exc_info is None:
            return super().handle_result(message, worker_ctx, result, exc_info)  # type: ignore[no-any-return]

        arguments = self.queue.queue_arguments or {}
        verdict = carry_out_backoff(
            self,
            message,
            backoff,
            exc_info,
            target_queue=self.queue.name,
            headers=retry_headers(message, worker_ctx),
            on_expired=self.on_expired,
            dead_letter_exchange=arguments.get(_DEAD_LETTER_EXCHANGE),
        )
        if not verdict.settled:
            message_settler(self).ack_message(message)
        if verdict.exc_info[1] is backoff:
            return result, exc_info
        return None, verdict.exc_info


consume = Consumer.decorator
