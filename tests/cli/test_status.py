"""``aio-backoff status``: copies per target queue, parked messages per queue."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from aio_backoff import Ladder
from tests.cli.conftest import (
    LEVEL,
    Cli,
    back_to,
    put_ladder_copy,
    put_parked,
    put_per_delay_copy,
    ready,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


async def one_copy_waiting(
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
    queue_type: str = "classic",
    *,
    extra_arguments: dict[str, Any] | None = None,
) -> tuple[str, Ladder]:
    """A target queue's name and a ``queue_type`` ladder (its level ``LEVEL`` with
    ``extra_arguments`` too) with one copy for it in that level, due in 2**LEVEL ms."""
    target = unique_name("orders")
    ladder = Ladder(unique_name("dx"), queue_type)
    await put_ladder_copy(
        channel, declared, ladder, LEVEL, 2**LEVEL, target,
        extra_arguments=extra_arguments,
    )  # fmt: skip
    return target, ladder


async def test_copies_per_target_and_parked_per_queue(
    cli: Cli,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    target, other = unique_name("orders"), unique_name("other")
    ladder = Ladder(unique_name("dx"), "classic")
    delay = 2**LEVEL + 2**4 + 1  # in level 21, then 17 ms below it
    for _ in range(2):
        await put_ladder_copy(channel, declared, ladder, LEVEL, delay, target)
    await put_ladder_copy(channel, declared, ladder, LEVEL, 2**LEVEL, other)
    per_delay = random.randrange(10**8, 10**9)
    await put_per_delay_copy(
        channel, declared, ladder.delay_exchange, per_delay, target
    )
    await put_parked(channel, declared, target, 2)

    before = datetime.datetime.now(datetime.UTC)
    ran = await cli("status", "--json", "--delay-exchange", ladder.delay_exchange)
    after = datetime.datetime.now(datetime.UTC)
    assert ran.code == 0, ran.err
    rows = {row["queue"]: row for row in ran.json()["targets"]}
    mine = rows[target]
    assert mine["waiting"] == 3
    assert mine["where"] == {ladder.level(LEVEL): 2, f"backoff--{per_delay}ms": 1}
    due = datetime.datetime.fromisoformat(mine["next_due_by"])
    wait = datetime.timedelta(milliseconds=2**LEVEL + 17)
    assert before + wait <= due <= after + wait
    assert rows[other]["waiting"] == 1
    parked = {row["queue"]: row["parked"] for row in ran.json()["parking_queues"]}
    assert parked[f"{target}.parked"] == 2
    # looking took nothing away
    await back_to(connection, ladder.level(LEVEL), 3)
    await back_to(connection, f"{target}.parked", 2)


async def test_the_table_names_the_target_and_where_its_copies_wait(
    cli: Cli,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    target, ladder = await one_copy_waiting(channel, declared, unique_name)
    ran = await cli("status", "--delay-exchange", ladder.delay_exchange)
    assert ran.code == 0, ran.err
    line = next(line for line in ran.out.splitlines() if line.startswith(target))
    assert f"{ladder.level(LEVEL)} x1" in line
    assert line.split()[1] == "1"


async def test_a_quorum_level_with_a_delivery_limit_is_counted_not_read(
    cli: Cli,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    """Reading would count toward the limit: three runs with a limit of 1 would
    have dead-lettered the copy (to a level exchange that does not exist here, so
    it would be gone)."""
    target, ladder = await one_copy_waiting(
        channel, declared, unique_name, "quorum",
        extra_arguments={"x-delivery-limit": 1},
    )  # fmt: skip
    for _ in range(3):
        ran = await cli("status", "--json", "--delay-exchange", ladder.delay_exchange)
        assert ran.code == 0, ran.err
        assert ran.json()["not_read"] == {ladder.level(LEVEL): 1}
        assert target not in {row["queue"] for row in ran.json()["targets"]}
    assert await ready(connection, ladder.level(LEVEL)) == 1


async def test_without_management_the_ladder_is_read_over_amqp(
    cli: Cli,
    broker: Any,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    _, ladder = await one_copy_waiting(channel, declared, unique_name)
    ran = await cli(
        "status", "--json", "--delay-exchange", ladder.delay_exchange,
        "--url", broker.amqp_url, "--management-url", "http://127.0.0.1:1",
        with_broker=False,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert [row["waiting"] for row in ran.json()["targets"]] == [1]
    assert "no management API answers" in ran.json()["notes"][0]


async def test_unreachable_broker_exits_3(cli: Cli) -> None:
    ran = await cli(
        "status", "--url", "amqp://guest:guest@127.0.0.1:1/", with_broker=False
    )
    assert ran.code == 3
    assert "no broker answers" in ran.err


async def test_an_unknown_vhost_in_the_url_exits_4(cli: Cli, broker: Any) -> None:
    ran = await cli(
        "status", "--url", broker.amqp_url.rstrip("/") + "/no-such-vhost",
        "--management-url", broker.api_url, with_broker=False,
    )  # fmt: skip
    assert ran.code == 4
    assert "on opening 'no-such-vhost'" in ran.err


async def test_an_unknown_vhost_option_exits_6(cli: Cli) -> None:
    ran = await cli("status", "--vhost", "no-such-vhost")
    assert ran.code == 6
    assert "no virtual host 'no-such-vhost'" in ran.err


async def test_management_refusing_the_credentials_exits_4(
    cli: Cli, broker: Any
) -> None:
    api = broker.api_url.replace("guest:guest", "guest:wrong")
    ran = await cli(
        "status", "--url", broker.amqp_url, "--management-url", api, with_broker=False
    )
    assert ran.code == 4
    assert "refused user 'guest' (HTTP 401)" in ran.err


async def test_a_quorum_ladder_level_as_declared_is_read_only_on_3x(
    cli: Cli,
    broker: Any,
    connection: AbstractConnection,
    channel: AbstractChannel,
    declared: Any,
    unique_name: Callable[[str], str],
) -> None:
    """A quorum level with the ladder's own arguments: no delivery limit on 3.x,
    where status reads it; the default limit of 20 on 4.x, where it is counted."""
    target, ladder = await one_copy_waiting(channel, declared, unique_name, "quorum")
    ran = await cli("status", "--json", "--delay-exchange", ladder.delay_exchange)
    assert ran.code == 0, ran.err
    read = {row["queue"]: row["waiting"] for row in ran.json()["targets"]}
    if broker.major >= 4:
        assert ran.json()["not_read"] == {ladder.level(LEVEL): 1}
        assert "delivery limit of 20" in " ".join(ran.json()["notes"])
        assert target not in read
    else:
        assert ran.json()["not_read"] == {}
        assert read[target] == 1
    await back_to(connection, ladder.level(LEVEL), 1)


async def test_a_guessed_management_api_of_another_broker_is_refused(
    cli: Cli, broker: Any
) -> None:
    """Without --management-url the API is guessed on port 15672; when the broker
    there listens on another AMQP port, its queues are not this broker's."""
    url = broker.amqp_url.replace(":5672/", ":5673/").replace(":5674/", ":5673/")
    ran = await cli("status", "--url", url, with_broker=False)
    assert ran.code == 2, ran.out
    assert "belongs to a broker whose AMQP port is 5672, not 5673" in ran.err
