"""Declares and binds shared by concurrent copies (no broker: the calls are ours)."""

from __future__ import annotations

import asyncio

import pytest

from aio_backoff.aiopika._bindings import DeclareOnce, TargetBindings

pytestmark = pytest.mark.timeout(10)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Gate:
    """A bind or declare that waits until released, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()
        self.error: BaseException | None = None

    async def __call__(self) -> None:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error


async def started(tasks: list[asyncio.Task[None]]) -> None:
    for _ in range(3):  # let every task reach its await
        await asyncio.sleep(0)


async def test_concurrent_binds_of_one_target_share_one_call() -> None:
    clock = Clock()
    bindings = TargetBindings(60.0, clock)
    gate = Gate()
    tasks = [
        asyncio.create_task(bindings.bind("q", gate, force=False)) for _ in range(5)
    ]
    await started(tasks)
    gate.release.set()
    await asyncio.gather(*tasks)
    assert gate.calls == 1
    await bindings.bind("q", gate, force=False)  # bound recently: nothing sent
    assert gate.calls == 1
    clock.now = 60.0  # rebind_s later: bound again
    await bindings.bind("q", gate, force=False)
    assert gate.calls == 2
    await bindings.bind("q", gate, force=True)
    assert gate.calls == 3


async def test_a_failed_bind_fails_its_waiters_and_is_not_remembered() -> None:
    bindings = TargetBindings(60.0, Clock())
    gate = Gate()
    gate.error = RuntimeError("404 no queue")
    tasks = [
        asyncio.create_task(bindings.bind("q", gate, force=False)) for _ in range(3)
    ]
    await started(tasks)
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [repr(result) for result in results] == [repr(gate.error)] * 3
    assert gate.calls == 1
    assert bindings.due("q")


async def test_a_waiter_binds_itself_when_the_binding_caller_is_cancelled() -> None:
    bindings = TargetBindings(60.0, Clock())
    gate = Gate()
    first = asyncio.create_task(bindings.bind("q", gate, force=False))
    await started([first])
    second = asyncio.create_task(bindings.bind("q", gate, force=False))
    await started([second])
    first.cancel()
    await started([second])
    gate.release.set()
    await second  # not cancelled: it bound the queue itself
    assert first.cancelled()
    assert gate.calls == 2
    assert not bindings.due("q")


async def test_declare_once_is_shared_and_forced_once_for_a_crowd() -> None:
    once = DeclareOnce()
    gate = Gate()
    tasks = [asyncio.create_task(once.run(gate, force=False)) for _ in range(4)]
    await started(tasks)
    gate.release.set()
    await asyncio.gather(*tasks)
    assert gate.calls == 1
    await once.run(gate, force=False)
    assert gate.calls == 1
    # four copies failed and force a declare at once: one declare answers them all
    once.forget()
    gate.release.clear()
    forced = [asyncio.create_task(once.run(gate, force=True)) for _ in range(4)]
    await started(forced)
    gate.release.set()
    await asyncio.gather(*forced)
    assert gate.calls == 2
