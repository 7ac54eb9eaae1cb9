"""The inventory service on nameko, with nameko_bridge.

Run it: ``nameko run --broker amqp://guest:guest@localhost/ interop_nameko_service``.
The same service on asyncio is ``interop_asyncio_service.py``; callers cannot tell
the two apart (``interop_client.py`` calls either).
"""

import os

from nameko.extensions import DependencyProvider

from nameko_bridge import Backoff
from nameko_bridge.events import event_handler
from nameko_bridge.rpc import rpc

# Overridable so that the tests can run this file next to other services.
SERVICE = os.environ.get("INVENTORY_SERVICE", "inventory")
ORDERS = os.environ.get("ORDERS_SERVICE", "orders")


class WarehouseBusy(Backoff):
    """Try again in 100 ms, 200 ms, then every 400 ms; give up after 5 retries."""

    schedule = (100, 200, 400)
    limit = 5
    random_sigma = 0


class Warehouse:
    """Stands in for a remote warehouse API that is busy for the first two
    requests about anything."""

    def __init__(self):
        self.requests = {}

    def ready(self, what):
        self.requests[what] = self.requests.get(what, 0) + 1
        return self.requests[what] > 2


class WarehouseProvider(DependencyProvider):
    def setup(self):
        self.warehouse = Warehouse()
        self.reserved_orders = []

    def get_dependency(self, worker_ctx):
        return self


class Inventory:
    name = SERVICE
    state = WarehouseProvider()

    @rpc
    def reserve(self, sku, quantity):
        if not self.state.warehouse.ready(sku):
            raise WarehouseBusy()
        tries = self.state.warehouse.requests[sku]
        return {"sku": sku, "reserved": quantity, "tries": tries}

    @event_handler(ORDERS, "order_placed")
    def on_order_placed(self, order):
        if not self.state.warehouse.ready(order["id"]):
            raise WarehouseBusy()
        self.state.reserved_orders.append(order["id"])

    @rpc
    def reserved_orders(self):
        return self.state.reserved_orders
