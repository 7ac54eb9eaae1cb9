"""nameko's ``@rpc`` entrypoint, retried with ``Backoff``.

The caller keeps waiting while the request is retried, and gets the final result, or
a ``RemoteError`` whose ``exc_type`` is ``"Expired"`` once the retries are spent: the
reply is sent once, for the last attempt only.

A delayed request comes back to the service's queue ``rpc-{service}`` through the
default exchange, which loses the ``service.method`` routing key; the method travels
in the ``nameko.rpc_method_id`` header instead, which :class:`RpcConsumer` reads.
"""

from __future__ import annotations

import sys
from typing import Any

from nameko.rpc import Rpc as NamekoRpc
from nameko.rpc import RpcConsumer as NamekoRpcConsumer

from ._entrypoints import (
    ExcInfo,
    backoff_in,
    expect_backoff_exception,
    retry_headers,
    retry_later,
)
from .backoff import Backoff, BackoffPublisher
from .constants import RPC_METHOD_ID_HEADER_KEY

__all__ = ["Backoff", "Rpc", "RpcConsumer", "rpc"]


class RpcConsumer(NamekoRpcConsumer):  # type: ignore[misc]
    """nameko's ``RpcConsumer`` that finds the method of a retried request in the
    ``nameko.rpc_method_id`` header (falling back to the routing key)."""

    def handle_message(self, body: Any, message: Any) -> None:
        method_id = (message.headers or {}).get(RPC_METHOD_ID_HEADER_KEY)
        if method_id is None:
            method_id = message.delivery_info["routing_key"]
        try:
            provider = self.get_provider_for_method(method_id)
            provider.handle_message(body, message)
        except Exception:  # noqa: BLE001 - answered to the caller, as nameko does
            self.handle_result(message, None, sys.exc_info())


class Rpc(NamekoRpc):  # type: ignore[misc]
    """nameko's ``Rpc``; a method that raises ``Backoff`` is called again later."""

    rpc_consumer = RpcConsumer()
    backoff_publisher = BackoffPublisher()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["expected_exceptions"] = expect_backoff_exception(
            kwargs.pop("expected_exceptions", ())
        )
        super().__init__(*args, **kwargs)

    def handle_result(
        self,
        message: Any,
        worker_ctx: Any,
        result: Any,
        exc_info: ExcInfo | None,
    ) -> tuple[Any, ExcInfo | None]:
        backoff = backoff_in(exc_info)
        if backoff is None:
            return super().handle_result(message, worker_ctx, result, exc_info)  # type: ignore[no-any-return]

        headers = retry_headers(message, worker_ctx)
        headers.setdefault(
            RPC_METHOD_ID_HEADER_KEY, message.delivery_info["routing_key"]
        )
        # rpc-{service}: set up by the RpcConsumer before any request arrives
        target_queue = self.rpc_consumer.queue.name
        expired = retry_later(
            self, message, backoff, target_queue=target_queue, headers=headers
        )
        if expired is None:
            return result, exc_info
        # the reply to the caller, then the ack: nameko's own path
        return super().handle_result(message, worker_ctx, None, expired)  # type: ignore[no-any-return]


rpc = Rpc.decorator
