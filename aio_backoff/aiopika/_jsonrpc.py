"""aio-pika's ``JsonRPC`` with delayed retries: :class:`BackoffJsonRPC`, and how a
``Backoff.Expired`` travels in a JSON-RPC error reply (:class:`RemoteBackoffExpired`).
"""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.patterns import JsonRPC
from aio_pika.patterns.rpc import JsonRPCError

from ..core._backoff import Backoff
from ._rpc import BackoffRPC

__all__ = ["EXPIRED_ERROR_TYPE", "BackoffJsonRPC", "RemoteBackoffExpired"]

EXPIRED_ERROR_TYPE = "Backoff.Expired"
"""The ``error.type`` of a JSON-RPC error reply that carries a ``Backoff.Expired``."""


class RemoteBackoffExpired(Backoff.Expired, JsonRPCError):
    """A ``Backoff.Expired`` reply to a :class:`BackoffJsonRPC` call.

    Catch it as ``Backoff.Expired`` (or, as before, as aio-pika's ``JsonRPCError``:
    ``args`` are the same ``("RPC exception", payload)``). ``retries``, ``limit``
    and ``max_delay_ms`` come from the server; ``cause`` is the ``repr`` of what the
    method last raised (the ``retry_for`` error, or a ``Backoff`` raised with a
    message), else None.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.remote_message = ""
        self.cause: str | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RemoteBackoffExpired:
        error = payload.get("error") or {}
        expired = cls("RPC exception", payload)
        remote_args = error.get("args") or []
        expired.remote_message = str(remote_args[0]) if remote_args else ""
        expired.retries = int(error.get("retries") or 0)
        expired.limit = int(error.get("limit") or 0)
        expired.max_delay_ms = float(error.get("max_delay_ms") or 0.0)
        cause = error.get("cause")
        expired.cause = None if cause is None else str(cause)
        return expired

    def __str__(self) -> str:
        text = self.remote_message or "Backoff expired on the server"
        return text if self.cause is None else f"{text}; last error: {self.cause}"


class BackoffJsonRPC(BackoffRPC, JsonRPC):
    """aio-pika's ``JsonRPC`` with retries, as :class:`BackoffRPC`.

    On the wire a ``Backoff.Expired`` is a JSON-RPC error whose ``error.type`` is
    ``"Backoff.Expired"``, with ``retries``, ``limit``, ``max_delay_ms`` and ``cause``
    besides aio-pika's ``message`` and ``args``. A ``BackoffJsonRPC`` caller raises it
    as :class:`RemoteBackoffExpired` (a ``Backoff.Expired`` and a ``JsonRPCError``);
    a plain ``JsonRPC`` caller gets aio-pika's ``JsonRPCError`` with that payload.
    """

    def serialize_exception(self, exception: Exception) -> Any:
        payload = super().serialize_exception(exception)
        if isinstance(exception, Backoff.Expired):
            # what the method raised: the error retry_for converted, or a Backoff
            # that says something (a bare one, or a conversion of it, says nothing)
            cause = exception.__cause__
            while isinstance(cause, Backoff) and not cause.args:
                cause = cause.__cause__
            payload["error"].update(
                type=EXPIRED_ERROR_TYPE,
                retries=exception.retries,
                limit=exception.limit,
                max_delay_ms=exception.max_delay_ms,
                cause=None if cause is None else repr(cause),
            )
        return payload

    async def deserialize_message(self, message: AbstractIncomingMessage) -> Any:
        payload = await super().deserialize_message(message)
        if isinstance(payload, JsonRPCError) and len(payload.args) == 2:
            body = payload.args[1]
            if (
                isinstance(body, dict)
                and isinstance(body.get("error"), dict)
                and body["error"].get("type") == EXPIRED_ERROR_TYPE
            ):
                return RemoteBackoffExpired.from_payload(body)
        return payload
