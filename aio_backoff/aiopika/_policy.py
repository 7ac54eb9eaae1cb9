"""How a consumer treats its handler's exceptions: :class:`RetryPolicy`.

``Retrier``, ``BackoffRPC`` and ``NamekoService`` each hold one (and let a queue, a
method or an entrypoint override it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..core._backoff import Backoff, RetryFor, as_backoff
from ._expiry import ExpiryAction, dead_letter_or_park

__all__ = ["RetryPolicy"]


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
