"""Where a delayed copy waits: one placement per topology, one interface.

:class:`~aio_backoff.DelayedPublisher` asks its placement to prepare the topology
(declares, bindings), where to publish a copy (exchange, routing key, properties)
and, once the broker has confirmed it, whether the copy is sure to be held. The
placements are :mod:`._per_delay` (nameko-amqp-retry's queues), :mod:`._ladder` and
:mod:`._plugin` (the delayed-message exchange).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import aiormq.abc
from pamqp.commands import Basic

from ..core._plan import RetryPlan

__all__ = ["Placement"]


class Placement(Protocol):
    """What :class:`~aio_backoff.DelayedPublisher` needs from a topology."""

    mandatory: bool
    """Publish with ``mandatory``: the broker returns a copy it cannot route."""

    def describe(self, plan: RetryPlan) -> str:
        """Where the copy goes, for log lines and errors ("via ...")."""
        ...

    async def declare(
        self, channel: aiormq.abc.AbstractChannel, targets: Iterable[str] = ()
    ) -> None:
        """Declare what does not depend on a copy, unless already declared, and
        bind ``targets`` (the queues copies will come back to), ahead of the first
        retry."""
        ...

    async def prepare(
        self, channel: aiormq.abc.AbstractChannel, plan: RetryPlan, *, force: bool
    ) -> None:
        """Declare what this copy needs and is not known to exist (``force``: all)."""
        ...

    def address(self, plan: RetryPlan) -> tuple[str, str]:
        """``(exchange, routing_key)`` to publish the copy to."""
        ...

    def properties(
        self, properties: Basic.Properties, plan: RetryPlan
    ) -> Basic.Properties:
        """The copy's properties, given the original's (with the plan's headers)."""
        ...

    def held(self, plan: RetryPlan) -> bool:
        """After the confirm: whether the copy is sure to be kept until it is due."""
        ...

    def forget(self, plan: RetryPlan) -> None:
        """A publish failed: declare again before the next copy like this one."""
        ...
