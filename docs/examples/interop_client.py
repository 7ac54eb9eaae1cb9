"""An asyncio caller of the inventory service, whichever stack runs it.

Run it: ``python interop_client.py`` with either inventory service running.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from aio_backoff import EventDispatcher, NamekoRpcClient


async def place_order(
    connection: AbstractConnection,
    inventory: str = "inventory",
    orders: str = "orders",
) -> dict[str, Any]:
    async with NamekoRpcClient(connection, timeout=10) as rpc:
        # backs off twice inside the service, then answers; a service that gives
        # up raises RemoteExpired, a Backoff.Expired
        reservation = await rpc.call(inventory, "reserve", "apple", quantity=3)
        order_id = f"order-{uuid.uuid4().hex[:8]}"
        async with EventDispatcher(connection) as dispatch:
            await dispatch(orders, "order_placed", {"id": order_id})
        for _ in range(200):  # the handler backs off twice too
            if order_id in await rpc.call(inventory, "reserved_orders"):
                break
            await asyncio.sleep(0.05)
        else:
            msg = f"{inventory} did not handle {order_id} within 10 s"
            raise TimeoutError(msg)
    return {"reservation": reservation, "order": order_id}


async def main() -> None:
    uri = os.environ.get("AMQP_URI", "amqp://guest:guest@localhost/")
    async with await aio_pika.connect_robust(uri) as connection:
        print(await place_order(connection))


if __name__ == "__main__":
    asyncio.run(main())
