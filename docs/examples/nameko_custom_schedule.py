"""Custom schedule: retry after 30, then 60, then 120 ms, for a ``@consume`` handler.

The handler turns a ``ConnectionError`` of a flaky dependency into the Backoff,
chained from it. ``@entrypoint_retry(retry_for=ConnectionError, schedule=(30, 60,
120), limit=5, random_sigma=0)`` under ``@consume`` does the same without the
try/except. Needs RabbitMQ on 127.0.0.1:5672 (or ``AMQP_URI``)::

    .venv/bin/python docs/examples/nameko_custom_schedule.py
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

from eventlet.queue import LightQueue  # noqa: E402
from kombu.messaging import Exchange, Queue  # noqa: E402
from nameko.amqp.publish import Publisher  # noqa: E402
from nameko.runners import ServiceRunner  # noqa: E402

from nameko_bridge import Backoff  # noqa: E402
from nameko_bridge.messaging import consume  # noqa: E402


class ImpatientBackoff(Backoff):
    """Retries after 30, then 60, then 120 ms (and 120 ms from then on)."""

    schedule = (30, 60, 120)
    limit = 5
    random_sigma = 0


invoices = Exchange("invoices")
invoice_queue = Queue("invoices", exchange=invoices, routing_key="invoice")
ATTEMPTS: list[float] = []
SENT: LightQueue = LightQueue()


def mail_invoice(invoice: dict[str, Any]) -> None:
    """The flaky dependency: down for the first three tries."""
    if len(ATTEMPTS) < 4:
        raise ConnectionError("mail server unavailable")
    SENT.put(invoice["number"])


class InvoiceService:
    name = "invoices"

    @consume(invoice_queue)
    def send_invoice(self, invoice: dict[str, Any]) -> None:
        ATTEMPTS.append(time.monotonic())
        try:
            mail_invoice(invoice)
        except ConnectionError as error:
            raise ImpatientBackoff() from error


def main(config: dict[str, Any] | None = None) -> list[int]:
    config = config or {
        "AMQP_URI": os.environ.get("AMQP_URI", "pyamqp://guest:guest@127.0.0.1:5672/")
    }
    ATTEMPTS.clear()
    runner = ServiceRunner(config)
    runner.add_service(InvoiceService)
    runner.start()
    try:
        Publisher(config["AMQP_URI"]).publish(
            {"number": 1001},
            exchange=invoices,
            routing_key="invoice",
            declare=[invoices],
        )
        number = SENT.get(timeout=10)
    finally:
        runner.stop()
    gaps = [round((b - a) * 1000) for a, b in itertools.pairwise(ATTEMPTS)]
    print(f"invoice {number} sent on attempt {len(ATTEMPTS)}; gaps in ms: {gaps}")
    return gaps


if __name__ == "__main__":
    # one line per retry decision from nameko_bridge; nameko's own worker warnings
    # (the expected Backoff, with its traceback) are left out
    logging.basicConfig(format="%(relativeCreated)5.0f ms  %(message)s")
    logging.getLogger("nameko_bridge").setLevel(logging.INFO)
    logging.getLogger("nameko").setLevel(logging.ERROR)
    main()
