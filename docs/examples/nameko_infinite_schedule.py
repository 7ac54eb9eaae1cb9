"""No limit: an event handler that retries until the work can be done.

``limit = 0`` (or ``None``) retries forever; here the handler waits for a flag that
is set after ~150 ms, retrying every 30 ms. Needs RabbitMQ on 127.0.0.1:5672 (or
``AMQP_URI``)::

    .venv/bin/python docs/examples/nameko_infinite_schedule.py
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()  # nameko runs on eventlet: patch before anything else

import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from eventlet.queue import LightQueue  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402
from nameko.standalone.events import event_dispatcher  # noqa: E402

from nameko_bridge import Backoff  # noqa: E402
from nameko_bridge.events import event_handler  # noqa: E402


class InfiniteBackoff(Backoff):
    """Retries forever, every 30 ms."""

    schedule = (30,)
    limit = 0
    random_sigma = 0


UPSTREAM_READY = {"at": 0.0}
HANDLED: LightQueue = LightQueue()


class ShippingService:
    name = "shipping"

    @event_handler("orders", "order_paid")
    def ship(self, order: dict[str, Any]) -> str:
        if time.time() < UPSTREAM_READY["at"]:
            raise InfiniteBackoff()
        HANDLED.put(f"shipped order {order['id']}")
        return "shipped"


def main(config: dict[str, Any] | None = None) -> str:
    config = config or {
        "AMQP_URI": os.environ.get("AMQP_URI", "pyamqp://guest:guest@127.0.0.1:5672/")
    }
    runner = ServiceRunner(config)
    runner.add_service(ShippingService)
    runner.start()
    try:
        UPSTREAM_READY["at"] = time.time() + 0.15
        event_dispatcher(config)("orders", "order_paid", {"id": 42})
        result: str = HANDLED.get(timeout=10)
    finally:
        runner.stop()
    print(result)
    return result


if __name__ == "__main__":
    # one line per retry decision from nameko_bridge; nameko's own worker warnings
    # (the expected Backoff, with its traceback) are left out
    logging.basicConfig(format="%(relativeCreated)5.0f ms  %(message)s")
    logging.getLogger("nameko_bridge").setLevel(logging.INFO)
    logging.getLogger("nameko").setLevel(logging.ERROR)
    main()
