"""``entrypoint_retry``: turn chosen exceptions of an entrypoint into ``Backoff``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import wrapt

from aio_backoff.core import Schedule, as_backoff, backoff_class

from .backoff import Backoff

__all__ = ["backoff_factory", "entrypoint_retry"]


def backoff_factory(
    *,
    limit: int | None = None,
    schedule: Sequence[float] | Schedule | None = None,
    random_sigma: float | None = None,
    random_groups_per_sigma: int | None = None,
    retry_for: object = None,
) -> type[Backoff]:
    """A ``Backoff`` subclass (``CustomBackoff``) with these settings; each one left
    out is ``Backoff``'s value *now*. ``retry_for`` is accepted and ignored, so that
    ``entrypoint_retry``'s arguments can be passed on whole, as nameko-amqp-retry's
    function of this name allowed.
    """
    del retry_for
    made = backoff_class(
        schedule=schedule,
        limit=limit,
        random_sigma=random_sigma,
        random_groups_per_sigma=random_groups_per_sigma,
        base=Backoff,
    )
    return cast("type[Backoff]", made)  # a subclass of its base


def entrypoint_retry(
    *,
    retry_for: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    limit: int | None = None,
    schedule: Sequence[float] | Schedule | None = None,
    random_sigma: float | None = None,
    random_groups_per_sigma: int | None = None,
) -> Callable[[Callable[..., Any]], Any]:
    """Decorate an entrypoint method so that ``retry_for`` errors retry it later.

    - ``retry_for``: an exception class or a tuple of them (default, also when
      empty: ``Exception``); such an error is raised again as a ``Backoff`` chained
      from it. A ``Backoff`` raised by the method passes through unchanged.
    - ``limit``, ``schedule``, ``random_sigma``, ``random_groups_per_sigma``: the
      policy of that ``Backoff``; each one left out is ``Backoff``'s value *at the
      time of decoration*.

    Put it under the entrypoint decorator (``@rpc`` then ``@entrypoint_retry(...)``);
    the method keeps its signature, so nameko still checks the call's arguments.
    """
    retry_types: tuple[type[BaseException], ...]
    if not retry_for:  # None or (), as nameko-amqp-retry read it
        retry_types = (Exception,)
    elif isinstance(retry_for, tuple):
        retry_types = retry_for
    else:
        retry_types = (retry_for,)
    backoff_cls = backoff_factory(
        schedule=schedule,
        limit=limit,
        random_sigma=random_sigma,
        random_groups_per_sigma=random_groups_per_sigma,
    )

    @wrapt.decorator
    def wrapper(
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return wrapped(*args, **kwargs)
        except retry_types as error:
            backoff = as_backoff(error, retry_types, backoff_cls)
            if backoff is None or backoff is error:  # None: cannot be, caught above
                raise
            raise backoff from error

    return wrapper
