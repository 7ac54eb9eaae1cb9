"""A FastStream app whose subscriber retries with ``BackoffMiddleware``.

``charge`` finds the payment gateway busy twice (``GatewayBusy``, 100 then 200 ms);
the third delivery succeeds. The message's ``backoff-retries`` header counts the
retries, as for every aio-backoff consumer. Needs RabbitMQ on 127.0.0.1:5672 (or
``AIO_BACKOFF_AMQP_URL``)::

    .venv/bin/python docs/examples/faststream_app.py

In a service, run ``app`` with ``faststream run module:app`` instead of ``main()``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitMessage, RabbitQueue

from aio_backoff import Backoff
from aio_backoff.faststream import BackoffMiddleware

AMQP_URL = os.environ.get("AIO_BACKOFF_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = RabbitQueue(f"payments.{uuid.uuid4().hex[:8]}", auto_delete=True)


class GatewayBusy(Backoff):
    schedule = (100, 200)  # ms; the last item repeats
    limit = 5
    random_sigma = 0


broker = RabbitBroker(AMQP_URL)
retries = BackoffMiddleware(broker, backoff=GatewayBusy, retry_for=[ConnectionError])
app = FastStream(broker, on_startup=[retries.start], after_shutdown=[retries.stop])

started = time.monotonic()
charged = asyncio.Event()


@broker.subscriber(QUEUE)
async def charge(order: str, message: RabbitMessage) -> None:
    retries_so_far = message.headers.get("backoff-retries", 0)
    at = time.monotonic() - started
    print(f"{at:5.2f}s  attempt {retries_so_far + 1} for {order}")
    if retries_so_far < 1:
        raise GatewayBusy  # the policy's schedule
    if retries_so_far < 2:
        raise ConnectionError("gateway reset")  # retry_for: the same policy
    print(f"charged {order}")
    charged.set()


async def main() -> None:
    await app.start()
    try:
        await broker.publish("order-42", QUEUE)
        await asyncio.wait_for(charged.wait(), timeout=10)
    finally:
        await app.stop()


if __name__ == "__main__":
    asyncio.run(main())
