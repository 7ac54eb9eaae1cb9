"""Declares and target bindings shared by concurrent copies: one in flight at a time.

When a hundred messages fail at once, their copies must not each declare the
ladder, or each bind their target queue, one round trip after another: the first
copy does it and the others wait for its answer. :class:`DeclareOnce` does this for
a topology declared whole, :class:`TargetBindings` for the binding of each target
queue (renewed every ``rebind_s`` seconds, in case the queue was deleted and
declared again since), and :class:`BoundTopology` puts the two together for the
placements that route to a bound target (the ladder's, the plugin's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import aiormq.abc

from ..core._plan import RetryPlan

__all__ = ["BoundTopology", "DeclareOnce", "TargetBindings"]


class DeclareOnce:
    """A declare that concurrent callers share.

    :meth:`run` declares unless it is known done; callers that arrive while a
    declare is in flight wait for that one instead of sending their own. ``force``
    (after a failed publish) declares again, unless another declare finished while
    the caller waited, which already answers the same doubt.
    """

    def __init__(self) -> None:
        self.done = False
        self._lock = asyncio.Lock()
        self._generation = 0

    async def run(self, declare: Callable[[], Awaitable[None]], *, force: bool) -> None:
        if self.done and not force:
            return
        seen = self._generation
        async with self._lock:
            if self._generation != seen or (self.done and not force):
                return  # declared by another caller while this one waited
            await declare()
            self.done = True
            self._generation += 1

    def forget(self) -> None:
        self.done = False


class TargetBindings:
    """When each target queue was last bound; one bind in flight per target."""

    def __init__(self, rebind_s: float, clock: Callable[[], float]) -> None:
        self.rebind_s = rebind_s
        self._clock = clock
        self._bound_at: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[None]] = {}

    def due(self, target: str) -> bool:
        bound_at = self._bound_at.get(target)
        return bound_at is None or self._clock() - bound_at >= self.rebind_s

    async def bind(
        self, target: str, bind: Callable[[], Awaitable[None]], *, force: bool
    ) -> None:
        """Bind ``target`` (by awaiting ``bind``) unless it was bound recently.

        A caller that finds a bind of ``target`` in flight waits for it and gets
        its outcome, its error included (or binds itself, should the bind's caller
        be cancelled); ``force`` sends a bind of its own.
        """
        if not force and not self.due(target):
            return
        pending = self._pending.get(target)
        while pending is not None and not force:
            try:
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled, not the bind
                # the bind's own caller was cancelled: bind here, unless another has
                pending = self._pending.get(target)
                if not self.due(target):
                    return
            else:
                return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # an error nobody else waited for is raised to this caller: not "unretrieved"
        future.add_done_callback(_retrieve)
        self._pending[target] = future
        started = self._clock()
        try:
            await bind()
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
            raise
        else:
            self._bound_at[target] = started
            future.set_result(None)
        finally:
            if self._pending.get(target) is future:
                del self._pending[target]

    def forget(self, target: str) -> None:
        self._bound_at.pop(target, None)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class BoundTopology:
    """What the ladder's and the plugin's placements share: their topology is
    declared whole once (:meth:`declare_topology`), and each target queue is bound
    to it (:meth:`target_binding`) when consuming starts or before its first copy;
    a failed publish has both done again."""

    def __init__(self, rebind_s: float, clock: Callable[[], float]) -> None:
        self._declared = DeclareOnce()
        self._bindings = TargetBindings(rebind_s, clock)

    @property
    def rebind_s(self) -> float:
        return self._bindings.rebind_s

    async def declare_topology(self, channel: aiormq.abc.AbstractChannel) -> None:
        """Declare the whole topology (idempotent); raise what refuses it."""
        raise NotImplementedError

    def target_binding(self, target_queue: str) -> tuple[str, str]:
        """``(exchange, routing_key)`` that binds ``target_queue`` to the topology."""
        raise NotImplementedError

    async def declare(
        self, channel: aiormq.abc.AbstractChannel, targets: Iterable[str] = ()
    ) -> None:
        await self._declare(channel, force=False)
        for target in targets:
            await self._bind(channel, target, force=False)

    async def prepare(
        self, channel: aiormq.abc.AbstractChannel, plan: RetryPlan, *, force: bool
    ) -> None:
        await self._declare(channel, force=force)
        await self._bind(channel, plan.routing_key, force=force)

    def held(self, plan: RetryPlan) -> bool:
        return True

    def forget(self, plan: RetryPlan) -> None:
        self._declared.forget()
        self._bindings.forget(plan.routing_key)

    async def _declare(
        self, channel: aiormq.abc.AbstractChannel, *, force: bool
    ) -> None:
        await self._declared.run(lambda: self.declare_topology(channel), force=force)

    async def _bind(
        self, channel: aiormq.abc.AbstractChannel, target: str, *, force: bool
    ) -> None:
        exchange, routing_key = self.target_binding(target)

        async def bind() -> None:
            await channel.queue_bind(target, exchange, routing_key)

        await self._bindings.bind(target, bind, force=force)
