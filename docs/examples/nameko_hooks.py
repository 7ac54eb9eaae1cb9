"""Hooks and metrics on a nameko service: the container config's ``BACKOFF_HOOKS``.

``stock.reserve`` is never ready: it is retried twice (30 ms apart), then the caller
gets ``Backoff.Expired`` and the call is parked (in ``rpc-stock.parked``). A plain
callable prints each event, and ``prometheus_hooks`` counts the same events (in a
registry of this example's own).
Needs RabbitMQ on 127.0.0.1:5672 (or ``AMQP_URI``) and
``pip install 'aio-backoff[prometheus]'``::

    .venv/bin/python docs/examples/nameko_hooks.py
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()  # nameko runs on eventlet: patch before anything else

import logging  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from nameko.exceptions import RemoteError  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from aio_backoff import Hooks  # noqa: E402
from aio_backoff.events import Event  # noqa: E402
from aio_backoff.prometheus import prometheus_hooks  # noqa: E402
from nameko_bridge import Backoff  # noqa: E402
from nameko_bridge.rpc import rpc  # noqa: E402


class StockNotThere(Backoff):
    schedule = (30,)
    limit = 2
    random_sigma = 0


class StockService:
    name = "stock"

    @rpc
    def reserve(self, sku: str) -> str:
        raise StockNotThere()


def main(config: dict[str, Any] | None = None) -> list[str]:
    """Run the service, call it once; the kinds of the events the hooks saw."""
    seen: list[str] = []

    def show(event: Event) -> None:
        seen.append(type(event).__name__)
        print(type(event).__name__, event)

    registry = CollectorRegistry()
    config = {
        "AMQP_URI": os.environ.get("AMQP_URI", "pyamqp://guest:guest@127.0.0.1:5672/"),
        **(config or {}),
        "BACKOFF_HOOKS": Hooks(every=show) + prometheus_hooks(registry),
    }
    runner = ServiceRunner(config)
    runner.add_service(StockService)
    runner.start()
    try:
        with ClusterRpcProxy(config) as proxy:
            try:
                proxy.stock.reserve("A-1")
            except RemoteError as error:
                print(f"the caller got {error.exc_type}")
    finally:
        runner.stop()
    retries = registry.get_sample_value(
        "aio_backoff_retries_total",
        {"queue": "rpc-stock", "exception": "StockNotThere"},
    )
    print(f"prometheus: retries {retries}")
    return seen


if __name__ == "__main__":
    logging.getLogger("nameko").setLevel(logging.ERROR)
    main()
