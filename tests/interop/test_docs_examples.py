"""docs/interop.md's examples: the inventory service written for each stack, and
one asyncio caller that cannot tell them apart."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection

from tests import brokers
from tests.interop.processes import ROOT, NamekoProcess, wait_for_consumers

pytestmark = [pytest.mark.broker, pytest.mark.timeout(45)]

EXAMPLES = ROOT / "docs" / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def names(unique_name: Callable[[str], str], declared: Any) -> dict[str, str]:
    inventory = unique_name("inventory").replace(".", "_")
    orders = unique_name("orders").replace(".", "_")
    declared.queue(f"rpc-{inventory}")
    declared.queue(f"evt-{orders}-order_placed--{inventory}.on_order_placed")
    declared.exchange(f"{orders}.events")
    return {"inventory": inventory, "orders": orders}


@pytest.fixture(params=["asyncio", "nameko"])
async def inventory(
    request: pytest.FixtureRequest,
    connection: AbstractRobustConnection,
    names: dict[str, str],
    tmp_path: Path,
) -> AsyncIterator[str]:
    """The inventory service running on one stack or the other."""
    if request.param == "asyncio":
        example = load("interop_asyncio_service")
        async with example.build(connection, names["inventory"], names["orders"]):
            yield request.param
        return
    url = brokers.current().amqp_url
    process = NamekoProcess(
        "interop_nameko_service:Inventory",
        amqp_url=url,
        log_path=tmp_path / "inventory.log",
        env={
            "INVENTORY_SERVICE": names["inventory"],
            "ORDERS_SERVICE": names["orders"],
        },
        cwd=EXAMPLES,
    )
    try:
        await wait_for_consumers(url, [f"rpc-{names['inventory']}"])
        yield request.param
    finally:
        process.stop()


async def test_the_client_cannot_tell_the_stacks_apart(
    inventory: str, connection: AbstractRobustConnection, names: dict[str, str]
) -> None:
    client = load("interop_client")
    outcome = await client.place_order(connection, names["inventory"], names["orders"])
    assert outcome["reservation"] == {"sku": "apple", "reserved": 3, "tries": 3}
    assert outcome["order"].startswith("order-")
