"""The inventory service on asyncio, with aio_backoff.NamekoService.

Run it: ``python interop_asyncio_service.py`` (``AMQP_URI`` names the broker).
The same service on nameko is ``interop_nameko_service.py``; callers cannot tell
the two apart (``interop_client.py`` calls either).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from aio_backoff import Backoff, NamekoService


class WarehouseBusy(Backoff):
    """Try again in 100 ms, 200 ms, then every 400 ms; give up after 5 retries."""

    schedule = (100, 200, 400)
    limit = 5
    random_sigma = 0


class Warehouse:
    """Stands in for a remote warehouse API that is busy for the first two
    requests about anything."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    def ready(self, what: str) -> bool:
        self.requests[what] = self.requests.get(what, 0) + 1
        return self.requests[what] > 2


def build(
    connection: AbstractConnection, name: str = "inventory", orders: str = "orders"
) -> NamekoService:
    service = NamekoService(connection, name)
    warehouse = Warehouse()
    reserved: list[str] = []

    @service.rpc
    async def reserve(sku: str, quantity: int) -> dict[str, Any]:
        if not warehouse.ready(sku):
            raise WarehouseBusy()
        return {"sku": sku, "reserved": quantity, "tries": warehouse.requests[sku]}

    @service.event_handler(orders, "order_placed")
    async def on_order_placed(order: dict[str, Any]) -> None:
        if not warehouse.ready(order["id"]):
            raise WarehouseBusy()
        reserved.append(order["id"])

    @service.rpc
    async def reserved_orders() -> list[str]:
        return reserved

    return service


async def main() -> None:
    uri = os.environ.get("AMQP_URI", "amqp://guest:guest@localhost/")
    connection = await aio_pika.connect_robust(uri)
    async with connection, build(connection):
        await asyncio.Event().wait()  # serve until cancelled (Ctrl-C)


if __name__ == "__main__":
    asyncio.run(main())
