"""One run of the nameko retry-throughput workload (driven by nameko_throughput.py).

Usage: python bench/nameko_throughput_worker.py --impl bridge|upstream|raw
           --messages N --amqp-uri URI

N messages wait in a fresh queue; a nameko ``consume`` entrypoint backs each one off
once (10 ms, no jitter) and succeeds on its second delivery. Prints one JSON line:
``{"impl": ..., "messages": N, "seconds": ..., "retries_per_s": ...}``, timed from the
first delivery to the last success.

- ``bridge``: ``nameko_bridge`` (run with this repository's .venv)
- ``upstream``: nameko-amqp-retry 0.7.1 (run with .venv-upstream)
- ``raw``: plain nameko; the handler itself publishes the delayed copy to the same
  delay queue with nameko's Publisher (mandatory + confirm) and returns, so nameko
  acks: the ceiling, with no declare at all in the loop.

nameko logs every expected entrypoint error (each Backoff) at WARNING with its
traceback; the worker raises the ``nameko`` logger to ERROR for all three, so that the
figures measure the retry path rather than traceback formatting.
"""

from __future__ import annotations

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from eventlet.event import Event  # noqa: E402
from kombu import Exchange, Queue  # noqa: E402
from nameko.amqp.publish import Publisher, get_connection  # noqa: E402
from nameko.containers import ServiceContainer  # noqa: E402

DELAY_MS = 10


def delay_queue(exchange: Exchange) -> Queue:
    """The raw loop's delay queue: name and arguments from the sans-IO core (default
    grace period, as both libraries declare it), so the three runs share one queue."""
    topology = importlib.import_module("aio_backoff").DelayQueue(delay_ms=DELAY_MS)
    return Queue(
        topology.name,
        exchange=exchange,
        binding_arguments=topology.binding_arguments,
        queue_arguments=topology.arguments,
        durable=True,
    )


def make_service(impl: str, queue: Queue, amqp_uri: str, state: dict[str, Any]) -> type:
    seen: set[int] = set()
    total = state["messages"]

    def first_or_done(payload: int) -> bool:
        """True on the first delivery of ``payload``; counts the finished ones."""
        now = time.perf_counter()
        if state["first"] is None:
            state["first"] = now
        if payload not in seen:
            seen.add(payload)
            return True
        state["done"] += 1
        if state["done"] == total:
            state["finished"].send(now)
        return False

    if impl == "raw":
        consume = importlib.import_module("nameko.messaging").consume
        exchange = Exchange("backoff", type="headers", durable=True)
        publisher = Publisher(amqp_uri, mandatory=True)

        class RawService:
            name = "nbbench"

            @consume(queue)
            def handle(self, payload: int) -> None:
                if first_or_done(payload):
                    publisher.publish(
                        payload,
                        exchange=exchange,
                        routing_key=queue.name,
                        headers={"backoff": DELAY_MS},
                        expiration=(DELAY_MS + 0.5) / 1000,
                    )

        return RawService

    # each interpreter has only its own library: import by name
    package = "nameko_bridge" if impl == "bridge" else "nameko_amqp_retry"
    backoff_base = importlib.import_module(package).Backoff
    retrying_consume = importlib.import_module(f"{package}.messaging").consume

    class BenchBackoff(backoff_base):  # type: ignore[misc, valid-type]
        schedule = (DELAY_MS,)
        random_sigma = 0
        limit = 5

    class RetryingService:
        name = "nbbench"

        @retrying_consume(queue)
        def handle(self, payload: int) -> None:
            if first_or_done(payload):
                raise BenchBackoff()

    return RetryingService


def renew_forever(amqp_uri: str, queue: Queue) -> None:
    """The raw loop's stand-in for a lease: declare the delay queue every 2 s."""
    while True:
        with get_connection(amqp_uri) as conn:
            queue.bind(conn).declare()
        eventlet.sleep(2)


def run(impl: str, messages: int, amqp_uri: str) -> dict[str, Any]:
    queue = Queue(f"nb-bench-{impl}-{uuid.uuid4().hex[:8]}", durable=True)
    with get_connection(amqp_uri) as conn:
        queue.bind(conn).declare()
    seeder = Publisher(amqp_uri)
    for number in range(messages):
        seeder.publish(number, routing_key=queue.name)

    renewer = None
    if impl == "raw":
        renewer = eventlet.spawn(
            renew_forever,
            amqp_uri,
            delay_queue(Exchange("backoff", type="headers", durable=True)),
        )
        eventlet.sleep(0.1)

    state: dict[str, Any] = {
        "messages": messages,
        "first": None,
        "done": 0,
        "finished": Event(),
    }
    container = ServiceContainer(
        make_service(impl, queue, amqp_uri, state), {"AMQP_URI": amqp_uri}
    )
    container.start()
    try:
        with eventlet.Timeout(300):
            finished = state["finished"].wait()
    finally:
        container.stop()
        if renewer is not None:
            renewer.kill()
        with get_connection(amqp_uri) as conn:
            queue.bind(conn).delete()
    seconds = finished - state["first"]
    return {
        "impl": impl,
        "messages": messages,
        "seconds": round(seconds, 4),
        "retries_per_s": round(messages / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("bridge", "upstream", "raw"), required=True)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--amqp-uri", required=True)
    args = parser.parse_args()
    logging.getLogger("nameko").setLevel(logging.ERROR)
    print(json.dumps(run(args.impl, args.messages, args.amqp_uri)), flush=True)


if __name__ == "__main__":
    main()
