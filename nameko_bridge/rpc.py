"""nameko's ``@rpc`` entrypoint, retried with ``Backoff``.

The caller keeps waiting while the request is retried, and gets the final result, or
a ``RemoteError`` whose ``exc_type`` is ``"Expired"`` once the retries are spent: the
reply is sent once, for the last attempt only.

A delayed request comes back to the service's queue ``rpc-{service}`` through the
default exchange, which loses the ``service.method`` routing key; the method travels
in the ``nameko.rpc_method_id`` header instead, which :class:`RpcConsumer` reads on
such a copy only. The header never reaches the worker's own calls to other services.
"""

from __future__ import annotations

import sys
from typing import Any

from nameko.rpc import Rpc as NamekoRpc
from nameko.rpc import RpcConsumer as NamekoRpcConsumer

from aio_backoff.core import DELAY_HEADER, RETRIES_HEADER
from aio_backoff.core.nameko_wire import rpc_routing_key, without_carried_delivery_keys

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
from .constants import RPC_METHOD_ID_HEADER_KEY

__all__ = ["Backoff", "Rpc", "RpcConsumer", "rpc"]


def method_id_of(message: Any) -> str:
    """The ``service.method`` a request is for.

    The routing key, unless the request is a delayed copy (it carries
    ``backoff-retries``, or nameko-amqp-retry's ``backoff``: it came back through
    the delay topology, whose routing key is the queue's name); then the
    ``nameko.rpc_method_id`` header. On any other request that header is a leftover
    of a retried call upstream and says nothing about this one.
    """
    routing_key: str = message.delivery_info["routing_key"]
    headers = message.headers or {}
    if RETRIES_HEADER not in headers and DELAY_HEADER not in headers:
        return routing_key
    method_id = headers.get(RPC_METHOD_ID_HEADER_KEY)
    if isinstance(method_id, bytes):
        method_id = method_id.decode(errors="replace")
    return method_id if isinstance(method_id, str) else routing_key


class RpcConsumer(NamekoRpcConsumer):  # type: ignore[misc]
    """nameko's ``RpcConsumer`` that finds the method of a retried request in the
    ``nameko.rpc_method_id`` header (see :func:`method_id_of`)."""

    def handle_message(self, body: Any, message: Any) -> None:
        try:
            provider = self.get_provider_for_method(method_id_of(message))
            provider.handle_message(body, message)
        except Exception:  # noqa: BLE001 - answered to the caller, as nameko does
            self.handle_result(message, None, sys.exc_info())


class Rpc(NamekoRpc):  # type: ignore[misc]
    """nameko's ``Rpc``; a method that raises ``Backoff`` is called again later.

    ``on_expired`` (see :class:`nameko_bridge.messaging.Consumer`): the caller gets
    ``Backoff.Expired`` with each choice; by default the request is also kept in
    ``rpc-{service}.parked``.
    """

    rpc_consumer = RpcConsumer()
    backoff_publisher = BackoffPublisher()

    def __init__(self, *args: Any, on_expired: str = "keep", **kwargs: Any) -> None:
        kwargs["expected_exceptions"] = expect_backoff_exception(
            kwargs.pop("expected_exceptions", ())
        )
        self.on_expired = check_on_expired(on_expired)
        super().__init__(*args, **kwargs)

    def unpack_message_headers(self, message: Any) -> dict[str, Any]:
        # called once per delivery, before the worker: a copy that came back
        tell_came_back(self, message, self.rpc_consumer.queue.name)
        # a caller's nameko.* context never brings a retry count or a method id
        return without_carried_delivery_keys(
            super().unpack_message_headers(message), message.headers
        )

    def handle_result(
        self,
        message: Any,
        worker_ctx: Any,
        result: Any,
        exc_info: ExcInfo | None,
    ) -> tuple[Any, ExcInfo | None]:
        backoff = backoff_in(exc_info)
        if backoff is None or exc_info is None:
            return super().handle_result(message, worker_ctx, result, exc_info)  # type: ignore[no-any-return]

        headers = retry_headers(message, worker_ctx)
        headers[RPC_METHOD_ID_HEADER_KEY] = rpc_routing_key(
            self.container.service_name, self.method_name
        )
        verdict = carry_out_backoff(
            self,
            message,
            backoff,
            exc_info,
            # rpc-{service}: set up by the RpcConsumer before any request arrives
            target_queue=self.rpc_consumer.queue.name,
            headers=headers,
            on_expired=self.on_expired,
        )
        if verdict.settled:
            return result, verdict.exc_info
        # the reply to the caller, then the ack: nameko's own path
        return super().handle_result(message, worker_ctx, None, verdict.exc_info)  # type: ignore[no-any-return]


rpc = Rpc.decorator
