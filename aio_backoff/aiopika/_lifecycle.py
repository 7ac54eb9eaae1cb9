"""The life of the objects that own channels: ``async with`` starts them on entry and
closes them on exit; :func:`drain` lets their handlers in flight finish on a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self


class Lifecycle:
    """Mixin: ``async with thing:`` starts ``thing`` and closes it on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def drain(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> int:  # noqa: ASYNC109
    """Wait up to ``timeout`` s for ``tasks``, then cancel those still running (a
    handler cancelled puts its message back on its queue) and wait up to ``timeout``
    s more for them to unwind. Returns how many were cancelled. When the wait itself
    is cancelled, the tasks are cancelled too."""
    pending = set(tasks)
    try:
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
    finally:
        for task in pending:
            task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    return len(pending)
