"""``aio-backoff verify``: the broker's abilities and the declared topology."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from aio_backoff import DelayQueue, Ladder
from tests.cli.conftest import Cli

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


async def declare_ladder(
    channel: AbstractChannel,
    declared: Any,
    ladder: Ladder,
    *,
    changed: dict[int, dict[str, Any]] | None = None,
    skip: tuple[int, ...] = (),
) -> None:
    """The ladder's 33 queues as a service declares them (level ``i`` with the
    arguments in ``changed[i]`` instead, the levels in ``skip`` left out)."""
    declared.ladder(ladder)
    for level in range(32):
        if level in skip:
            continue
        arguments = (changed or {}).get(level, ladder.level_arguments(level))
        await channel.declare_queue(
            ladder.level(level), durable=True, arguments=arguments
        )
    await channel.declare_queue(
        ladder.undeliverable, durable=True, arguments=ladder.undeliverable_arguments
    )


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_ladder_declared_as_expected_passes(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
    queue_type: Any,
) -> None:
    ladder = Ladder(unique_name("dx"), queue_type)
    await declare_ladder(channel, declared, ladder)
    ran = await cli(
        "verify", "--json", "--delay-exchange", ladder.delay_exchange,
        "--queue-type", queue_type,
    )  # fmt: skip
    assert ran.code == 0, ran.out
    found = ran.json()["findings"]
    assert {"level": "ok", "what": f"the 33 queues of {ladder.prefix}.* as expected",
            "todo": ""} in found  # fmt: skip


async def test_a_level_with_other_arguments_is_to_fix(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    ladder = Ladder(unique_name("dx"), "classic")
    wrong = {**ladder.level_arguments(5), "x-message-ttl": 31}
    await declare_ladder(channel, declared, ladder, changed={5: wrong}, skip=(7,))
    ran = await cli("verify", "--delay-exchange", ladder.delay_exchange)
    assert ran.code == 1, ran.out
    assert f"queue {ladder.level(5)} has other arguments: x-message-ttl=31 " in ran.out
    assert f"1 of the ladder's 33 queues are missing: {ladder.level(7)}" in ran.out
    assert "2 to fix" in ran.out


async def test_a_ladder_not_declared_yet_is_a_note(
    cli: Cli, unique_name: Callable[[str], str]
) -> None:
    ran = await cli("verify", "--json", "--delay-exchange", unique_name("none"))
    assert ran.code == 0
    assert any(
        f["level"] == "note" and "is declared yet" in f["what"]
        for f in ran.json()["findings"]
    )


async def declare_delay_queues(
    channel: AbstractChannel, declared: Any, exchange: str, graces: list[int]
) -> list[str]:
    """Delay queues bound to ``exchange``, one per grace (delays of their own)."""
    delays = random.sample(range(10**8, 10**9), len(graces))
    x = await channel.declare_exchange(
        declared.exchange(exchange), type="headers", durable=True
    )
    names = []
    for delay, grace in zip(delays, graces, strict=True):
        queue = DelayQueue(delay, exchange, grace)
        q = await channel.declare_queue(
            declared.queue(queue.name), durable=True, arguments=queue.arguments
        )
        await q.bind(x, arguments=queue.binding_arguments)
        names.append(queue.name)
    return names


async def test_delay_queues_with_different_graces_are_to_fix(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    exchange = unique_name("dx")
    names = await declare_delay_queues(channel, declared, exchange, [5000, 5000, 9000])
    ran = await cli("verify", "--topology", "per-delay", "--delay-exchange", exchange)
    assert ran.code == 1, ran.out
    assert "declared with 2 graces" in ran.out
    assert f"grace 9000 ms: {names[2]}" in ran.out
    assert "same grace_ms" in ran.out


async def test_delay_queues_that_agree_pass(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    exchange = unique_name("dx")
    await declare_delay_queues(channel, declared, exchange, [7000, 7000])
    ran = await cli("verify", "--topology", "per-delay", "--delay-exchange", exchange)
    assert ran.code == 0, ran.out
    assert "2 delay queue(s), all with a grace of 7000 ms" in ran.out


async def test_without_management_the_ladder_is_checked_over_amqp(
    cli: Cli,
    broker: Any,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    ladder = Ladder(unique_name("dx"), "classic")
    await declare_ladder(channel, declared, ladder, skip=(3,))
    ran = await cli(
        "verify", "--delay-exchange", ladder.delay_exchange, "--url", broker.amqp_url,
        "--management-url", "http://guest:guest@127.0.0.1:1", with_broker=False,
    )  # fmt: skip
    assert ran.code == 1, ran.out
    assert "no management API answers at http://127.0.0.1:1" in ran.out
    assert f"1 of the ladder's 33 queues are missing: {ladder.level(3)}" in ran.out


async def test_unreachable_broker_exits_3(cli: Cli) -> None:
    ran = await cli(
        "verify", "--url", "amqp://guest:guest@127.0.0.1:1/",
        "--management-url", "http://guest:guest@127.0.0.1:1", with_broker=False,
    )  # fmt: skip
    assert ran.code == 3
    assert "no broker answers at amqp://127.0.0.1:1/" in ran.err
    assert "Check --url" in ran.err


async def test_bad_credentials_exit_4(cli: Cli, broker: Any) -> None:
    url = broker.amqp_url.replace("guest:guest", "guest:wrong")
    api = broker.api_url.replace("guest:guest", "guest:wrong")
    ran = await cli("verify", "--url", url, "--management-url", api, with_broker=False)
    assert ran.code == 4
    assert "wrong" not in ran.err
    assert "Check the user and password" in ran.err


async def test_a_delay_exchange_of_another_type_is_to_fix(
    cli: Cli,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    exchange = declared.exchange(unique_name("dx"))
    await channel.declare_exchange(exchange, type="topic", durable=True)
    ran = await cli("verify", "--topology", "per-delay", "--delay-exchange", exchange)
    assert ran.code == 1, ran.out
    assert f"the delay exchange {exchange!r} is a topic exchange" in ran.out
