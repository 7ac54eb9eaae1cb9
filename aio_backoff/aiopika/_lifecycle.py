"""``async with`` for the objects that own channels: start on entry, close on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


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
