"""nameko services for the interop tests, run with ``nameko run`` as subprocesses.

Environment:

- ``INTEROP_PREFIX``: unique per test session; names the services and queues.
- ``INTEROP_REPORT``: a file to which every worker appends one JSON line: which
  side handled which job, after how many retries, and the outcome (``ok``, the
  Backoff class name, or ``Expired``).
- ``INTEROP_LIBRARY``: ``nameko_bridge`` (default) or ``nameko_amqp_retry`` (the
  old 0.7.1, run from ``.venv-upstream``). Only nameko and the library are imported
  here, so the module runs in either virtual environment.

Every entrypoint takes a job ``{"key": str, "failures": int}``: it backs off while
the message has been retried fewer than ``failures`` times, then returns. A job
with more failures than the limit expires.
"""

from __future__ import annotations

import importlib
import json
import os

from kombu import Queue
from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy

LIBRARY = os.environ.get("INTEROP_LIBRARY", "nameko_bridge")
PREFIX = os.environ["INTEROP_PREFIX"]
REPORT = os.environ["INTEROP_REPORT"]

retrying = importlib.import_module(LIBRARY)
rpc = importlib.import_module(f"{LIBRARY}.rpc").rpc
consume = importlib.import_module(f"{LIBRARY}.messaging").consume
event_handler = importlib.import_module(f"{LIBRARY}.events").event_handler

SERVICE = f"{PREFIX}_nameko"
EVENT_SOURCE = f"{PREFIX}_src"
JOBS_QUEUE = f"{PREFIX}-jobs"
SHARED_QUEUE = f"{PREFIX}-shared"
MIGRATION_QUEUE = f"{PREFIX}-migration"
ASYNCIO_DOWNSTREAM = f"{PREFIX}_aio_down"
"""The asyncio service a chain calls (``test_matrix_chain.py`` runs it)."""


class Fast(retrying.Backoff):
    """The matrix schedule: 50 ms, three retries, no jitter."""

    schedule = (50,)
    limit = 3
    random_sigma = 0


class Shared(retrying.Backoff):
    """For the queue shared with an asyncio consumer: 30 ms, six retries."""

    schedule = (30,)
    limit = 6
    random_sigma = 0


def retries_of(data):
    """Retries so far, the way aio_backoff counts them (the old library cannot
    import it): our ``backoff-retries`` header or, if larger, the x-death count."""
    ours = data.get("backoff-retries") or 0
    legacy = 0
    for death in data.get("x-death") or ():
        exchange = death.get("exchange")
        if isinstance(exchange, bytes):
            exchange = exchange.decode()
        if exchange == "backoff":
            legacy += int(death.get("count", 0))
    return max(int(ours), legacy)


def x_death_count(data):
    return sum(int(death.get("count", 0)) for death in data.get("x-death") or ())


class Attempt(DependencyProvider):
    """Gives the worker its context; reports every worker's outcome."""

    def get_dependency(self, worker_ctx):
        return worker_ctx

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        job = worker_ctx.args[0] if worker_ctx.args else {}
        record = {
            "side": LIBRARY,
            "service": worker_ctx.service_name,
            "entrypoint": worker_ctx.entrypoint.method_name,
            "key": job.get("key") if isinstance(job, dict) else None,
            "retries": retries_of(worker_ctx.data),
            "x_death": x_death_count(worker_ctx.data),
            "outcome": "ok" if exc_info is None else type(exc_info[1]).__name__,
            "error": None if exc_info is None else str(exc_info[1]),
            "call_id_stack": worker_ctx.call_id_stack,
        }
        with open(REPORT, "a") as report:
            report.write(json.dumps(record) + "\n")


def attempt(worker_ctx, job, backoff):
    retries = retries_of(worker_ctx.data)
    if retries < job["failures"]:
        raise backoff()
    return {"key": job["key"], "retries": retries, "side": LIBRARY}


class InteropService:
    """One nameko_bridge service with every kind of entrypoint."""

    name = SERVICE
    ctx = Attempt()

    @rpc
    def work(self, job):
        return attempt(self.ctx, job, Fast)

    @event_handler(EVENT_SOURCE, "job_for_nameko")
    def on_job(self, job):
        return attempt(self.ctx, job, Fast)

    @consume(Queue(JOBS_QUEUE, durable=True))
    def consume_job(self, job):
        return attempt(self.ctx, job, Fast)

    @consume(Queue(SHARED_QUEUE, durable=True))
    def consume_shared(self, job):
        return attempt(self.ctx, job, Shared)

    @consume(Queue(MIGRATION_QUEUE, durable=True))
    def consume_migration(self, job):
        return attempt(self.ctx, job, Fast)


class MigrationService:
    """The other side of the migration: only the shared migration queue."""

    name = f"{PREFIX}_migration_{LIBRARY}"
    ctx = Attempt()

    @consume(Queue(MIGRATION_QUEUE, durable=True))
    def consume_migration(self, job):
        return attempt(self.ctx, job, Fast)


class ChainService:
    """A retried RPC method that then calls another service (issue 7, finding 1).

    ``chain(job, target)`` backs off once; on the retried delivery it calls
    ``work(job)`` of the nameko service (``target == "nameko"``) or of the asyncio
    one, and returns its result. nameko copies every ``nameko.*`` header of the
    retried request into the worker context, ``nameko.rpc_method_id`` included,
    so the onward call carries it: the receiver must not trust it.
    """

    name = f"{PREFIX}_chain_{LIBRARY}"
    ctx = Attempt()
    nameko_down = RpcProxy(SERVICE)
    asyncio_down = RpcProxy(ASYNCIO_DOWNSTREAM)

    @rpc
    def chain(self, job, target):
        retries = retries_of(self.ctx.data)
        if retries < 1:
            raise Fast()
        proxy = self.nameko_down if target == "nameko" else self.asyncio_down
        return {"retries": retries, "down": proxy.work(job)}
