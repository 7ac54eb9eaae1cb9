"""Fixed schedule: retry every 50 ms until the limit, from a nameko ``@rpc`` method.

The caller just waits: ``report.build`` is not ready for ~120 ms, raises
``RegularBackoff`` meanwhile, and the caller gets the report once it is. Needs
RabbitMQ on 127.0.0.1:5672 (or ``AMQP_URI``)::

    .venv/bin/python docs/examples/nameko_fixed_schedule.py
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

from nameko.runners import ServiceRunner  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from nameko_bridge import Backoff  # noqa: E402
from nameko_bridge.rpc import rpc  # noqa: E402


class RegularBackoff(Backoff):
    """Retries every 50 ms, at most 10 times."""

    schedule = (50,)  # ms; the last item repeats
    limit = 10
    random_sigma = 0  # no jitter, so the timeline is exact


class ReportService:
    name = "report"

    @rpc
    def build(self, ready_at: float) -> str:
        if time.time() < ready_at:
            raise RegularBackoff()
        return "report ready"


def main(config: dict[str, Any] | None = None) -> str:
    config = config or {
        "AMQP_URI": os.environ.get("AMQP_URI", "pyamqp://guest:guest@127.0.0.1:5672/")
    }
    runner = ServiceRunner(config)
    runner.add_service(ReportService)
    runner.start()
    try:
        with ClusterRpcProxy(config) as proxy:
            started = time.monotonic()
            result: str = proxy.report.build(time.time() + 0.12)
            elapsed_ms = (time.monotonic() - started) * 1000
    finally:
        runner.stop()
    print(f"{result} after {elapsed_ms:.0f} ms (retried every 50 ms meanwhile)")
    return result


if __name__ == "__main__":
    # one line per retry decision from nameko_bridge; nameko's own worker warnings
    # (the expected Backoff, with its traceback) are left out
    logging.basicConfig(format="%(relativeCreated)5.0f ms  %(message)s")
    logging.getLogger("nameko_bridge").setLevel(logging.INFO)
    logging.getLogger("nameko").setLevel(logging.ERROR)
    main()
