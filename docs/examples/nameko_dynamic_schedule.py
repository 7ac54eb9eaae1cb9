"""Dynamic schedule: the delay is computed for each retry.

Override ``get_next_schedule_item(index)`` (``index`` = retries made so far), or
assign one of aio_backoff's schedule helpers. Here: 10 ms doubling each time, capped
at 80 ms. Once the limit is spent the caller gets a ``RemoteError`` whose
``exc_type`` is ``"Expired"``. Needs RabbitMQ on 127.0.0.1:5672 (or ``AMQP_URI``)::

    .venv/bin/python docs/examples/nameko_dynamic_schedule.py
"""

from __future__ import annotations

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()  # nameko runs on eventlet: patch before anything else

import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from nameko.exceptions import RemoteError  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from aio_backoff import exponential  # noqa: E402
from nameko_bridge import Backoff  # noqa: E402
from nameko_bridge.rpc import rpc  # noqa: E402


class DynamicBackoff(Backoff):
    """10, 20, 40, 80, 80, ... ms: computed, not listed."""

    limit = 6
    random_sigma = 0

    @classmethod
    def get_next_schedule_item(cls, index: int) -> float:
        return min(10 * 2**index, 80)


class HelperBackoff(Backoff):
    """The same schedule from a helper of the core."""

    limit = 6
    random_sigma = 0
    schedule = staticmethod(exponential(10, cap_ms=80))


CALLS: list[float] = []


class ExportService:
    name = "export"

    @rpc
    def fetch(self, ready_after_calls: int) -> int:
        CALLS.append(time.monotonic())
        if len(CALLS) < ready_after_calls:
            raise DynamicBackoff()
        return len(CALLS)

    @rpc
    def never(self) -> None:
        raise HelperBackoff()


def main(config: dict[str, Any] | None = None) -> tuple[list[int], str]:
    config = config or {
        "AMQP_URI": os.environ.get("AMQP_URI", "pyamqp://guest:guest@127.0.0.1:5672/")
    }
    CALLS.clear()
    runner = ServiceRunner(config)
    runner.add_service(ExportService)
    runner.start()
    try:
        with ClusterRpcProxy(config) as proxy:
            calls = proxy.export.fetch(5)
            gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(CALLS)]
            print(f"fetched on call {calls}; gaps in ms: {gaps}")
            try:
                proxy.export.never()
            except RemoteError as error:
                expired = f"{error.exc_type}: {error.value}"
                print(f"never: {expired}")
    finally:
        runner.stop()
    return gaps, expired


if __name__ == "__main__":
    # one line per retry decision from nameko_bridge; nameko's own worker warnings
    # (the expected Backoff, with its traceback) are left out
    logging.basicConfig(format="%(relativeCreated)5.0f ms  %(message)s")
    logging.getLogger("nameko_bridge").setLevel(logging.INFO)
    logging.getLogger("nameko").setLevel(logging.ERROR)
    main()
