"""nameko_bridge services on the ladder (``BACKOFF_TOPOLOGY``), and across stacks.

Each test runs in its own vhost (nameko's ``rabbit_config``), so the ladder of the
default delay exchange (``backoff.ladder.{queue_type}.*``) is the test's own and goes
with the vhost.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import NotFound
from kombu.messaging import Exchange, Queue
from nameko.amqp.publish import get_connection
from nameko.exceptions import RemoteError
from nameko.extensions import DependencyProvider
from nameko.testing.services import entrypoint_waiter
from opentelemetry import trace

from aio_backoff import Ladder, delay_queue_name, retries_done
from aio_backoff.otel import retry_links
from nameko_bridge import Backoff
from nameko_bridge.backoff import QUEUE_TYPE_CONFIG_KEY, TOPOLOGY_CONFIG_KEY
from nameko_bridge.events import event_handler
from nameko_bridge.messaging import consume
from nameko_bridge.rpc import rpc

from .conftest import eventually
from .tracing import EXPORTER, Traced, span_id, trace_id

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parents[2]

Record = tuple[str, int, str]
"""``(key or entrypoint, retries, outcome)`` of one worker."""


def outcome(exc_info: Any) -> str:
    if exc_info is None:
        return "ok"
    if issubclass(exc_info[0], Backoff.Expired):
        return "Expired"
    if issubclass(exc_info[0], Backoff):
        return "Backoff"
    return exc_info[0].__name__


class Outcomes(DependencyProvider):  # type: ignore[misc]
    """Gives the worker its context; records each worker's retries and outcome."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def get_dependency(self, worker_ctx: Any) -> Any:
        return worker_ctx

    def worker_result(
        self, worker_ctx: Any, result: Any = None, exc_info: Any = None
    ) -> None:
        job = worker_ctx.args[0] if worker_ctx.args else None
        key = job["key"] if isinstance(job, dict) and "key" in job else None
        self.records.append(
            (
                key or worker_ctx.entrypoint.method_name,
                retries_done(worker_ctx.data),
                outcome(exc_info),
            )
        )


def queue_exists(amqp_uri: str, name: str) -> bool:
    with get_connection(amqp_uri) as conn:
        try:
            Queue(name).bind(conn).queue_declare(passive=True)
        except NotFound:
            return False
    return True


def expired(worker_ctx: Any, result: Any, exc_info: Any) -> bool:
    return outcome(exc_info) == "Expired"


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_ladder_retries_and_expires_rpc_and_events(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    rpc_proxy: Any,
    dispatch_event: Callable[..., None],
    limited_backoff: int,
    fast_backoff: tuple[int, ...],
    queue_type: str,
) -> None:
    records: list[Record] = []

    class Service:
        name = "ladder_service"
        outcomes = Outcomes(records)

        @rpc
        def method(self, payload: Any) -> None:
            raise Backoff

        @event_handler("src_service", "event_type")
        def on_event(self, payload: Any) -> None:
            raise Backoff

    config = {
        **rabbit_config,
        TOPOLOGY_CONFIG_KEY: "ladder",
        QUEUE_TYPE_CONFIG_KEY: queue_type,
    }
    container = container_factory(Service, config)
    container.start()

    with (
        entrypoint_waiter(container, "method", callback=expired),
        pytest.raises(RemoteError) as raised,
    ):
        rpc_proxy.ladder_service.method("call")
    assert raised.value.exc_type == "Expired"
    assert f"Backoff aborted after '{limited_backoff}' retries" in str(raised.value)

    with entrypoint_waiter(container, "on_event", callback=expired):
        dispatch_event("src_service", "event_type", {})

    for entrypoint in ("method", "on_event"):
        assert [r for r in records if r[0] == entrypoint] == [
            (entrypoint, 0, "Backoff"),
            (entrypoint, 1, "Backoff"),
            (entrypoint, 2, "Expired"),
        ]
    # the copies waited in the ladder, not in per-delay queues
    uri = rabbit_config["AMQP_URI"]
    ladder = Ladder("backoff", queue_type)  # type: ignore[arg-type]
    for queue in ladder.queue_names:
        assert queue_exists(uri, queue), queue
    for delay in fast_backoff[:limited_backoff]:
        assert not queue_exists(uri, delay_queue_name(delay))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            TOPOLOGY_CONFIG_KEY,
            "bogus",
            "BACKOFF_TOPOLOGY: topology must be one of 'ladder', 'per-delay' or "
            "'plugin', got 'bogus'",
        ),
        (
            QUEUE_TYPE_CONFIG_KEY,
            "bogus",
            "BACKOFF_QUEUE_TYPE must be 'classic' or 'quorum', got 'bogus'",
        ),
    ],
)
def test_invalid_topology_setting_fails_container_start(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    key: str,
    value: str,
    expected: str,
) -> None:
    class Service:
        name = "ladder_service"

        @rpc
        def method(self, payload: Any) -> None:
            raise Backoff

    # refused as the container is made (nameko's getmembers reads the settings in
    # force) or at the latest when it starts (BackoffPublisher.setup)
    with pytest.raises(ValueError) as raised:
        container_factory(Service, {**rabbit_config, key: value}).start()
    assert expected in str(raised.value)


# -- across stacks: a ladder service and a per-delay Retrier on one queue ------------


DELAY_MS = 30
LIMIT = 6


class Shared(Backoff):
    schedule = (DELAY_MS,)
    limit = LIMIT
    random_sigma = 0


@pytest.fixture
def aio_process(
    rabbit_config: dict[str, Any],
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``start(module, *args)``: ``python -m tests.nameko.<module> AMQP_URL *args``,
    a process of its own (this one is monkeypatched by eventlet), once it has
    printed ``ready``; its further lines are on ``stdout``. SIGTERM stops it at the
    end of the test."""
    processes: list[subprocess.Popen[str]] = []
    url = rabbit_config["AMQP_URI"].replace("pyamqp://", "amqp://", 1)

    def start(module: str, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        env.pop("COVERAGE_PROCESS_START", None)
        process = subprocess.Popen(
            [sys.executable, "-m", f"tests.nameko.{module}", url, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", f"{module} did not start: {line!r}"
        return process

    yield start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
def aio_consumer(
    aio_process: Callable[..., subprocess.Popen[str]], tmp_path: Path
) -> Callable[[str, str], Path]:
    """``start(queue, topology)``: an aio-pika Retrier in a process of its own
    (``aio_consumer.py``), consuming once this returns; returns its report."""
    reports = itertools.count()

    def start(queue: str, topology: str) -> Path:
        report = tmp_path / f"aio-{next(reports)}.jsonl"
        report.touch()
        aio_process(
            "aio_consumer",
            *(queue, topology, str(report), str(DELAY_MS), str(LIMIT)),
        )
        return report

    return start


def merged(records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """``(retries, outcome)`` per delivery; the asyncio side's last Backoff and its
    expiry (two lines) count as one delivery."""
    steps: list[tuple[int, str]] = []
    for record in sorted(
        records, key=lambda r: (r["retries"], r["outcome"] == "Expired")
    ):
        step = (record["retries"], record["outcome"])
        if steps and step == (steps[-1][0], "Expired"):
            steps[-1] = step
        else:
            steps.append(step)
    return steps


def test_ladder_service_and_per_delay_retrier_share_a_queue(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    publish_message: Callable[..., None],
    aio_consumer: Callable[[str, str], Path],
) -> None:
    """The broker hands each delivery to either consumer; the nameko service's
    copies wait in the ladder, the Retrier's in per-delay queues, and the count
    carries across."""
    shared = Queue("shared_jobs", durable=True)
    nameko_records: list[Record] = []

    class Service:
        name = "ladder_service"
        ctx = Outcomes(nameko_records)

        @consume(shared)
        def consume_job(self, job: dict[str, Any]) -> None:
            if retries_done(self.ctx.data) < job["failures"]:
                raise Shared

    config = {**rabbit_config, TOPOLOGY_CONFIG_KEY: "ladder"}
    container_factory(Service, config).start()
    report = aio_consumer(shared.name, "per-delay")

    # an odd number of jobs: in lockstep, round-robin still alternates each job
    jobs = [{"key": f"ok-{n}", "failures": 4} for n in range(4)]
    jobs.append({"key": "doomed", "failures": 99})
    for job in jobs:
        publish_message(Exchange(""), job, routing_key=shared.name)

    def records(key: str) -> list[dict[str, Any]]:
        aio = [json.loads(line) for line in report.read_text().splitlines()]
        nameko = [
            {"side": "nameko", "key": k, "retries": n, "outcome": o}
            for k, n, o in nameko_records
        ]
        return [r for r in [*aio, *nameko] if r["key"] == key]

    def all_done() -> None:
        for job in jobs:
            finals = [r for r in records(job["key"]) if r["outcome"] != "Backoff"]
            assert finals, f"{job['key']} not finished"

    eventually(all_done, timeout=20)

    for job in jobs[:4]:
        assert merged(records(job["key"])) == [(n, "Backoff") for n in range(4)] + [
            (4, "ok")
        ]
    assert merged(records("doomed")) == [(n, "Backoff") for n in range(LIMIT)] + [
        (LIMIT, "Expired")
    ]
    # both took part, and at least one message went from one stack to the other
    sides = [[r["side"] for r in records(job["key"])] for job in jobs]
    assert {side for job_sides in sides for side in job_sides} == {"asyncio", "nameko"}
    assert any(len(set(job_sides)) == 2 for job_sides in sides)
    uri = rabbit_config["AMQP_URI"]
    assert queue_exists(uri, Ladder("backoff").level(4))  # 30 ms: 16 + 8 + 4 + 2
    assert queue_exists(uri, delay_queue_name(DELAY_MS))


def test_a_traced_copy_placed_by_nameko_links_on_the_asyncio_stack(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    publish_message: Callable[..., None],
    aio_consumer: Callable[[str, str], Path],
) -> None:
    """The copy a traced nameko worker placed (per-delay) comes back to a Retrier,
    whose ``retry_links`` of the message's headers links to the worker's span."""
    shared = Queue("traced_jobs", durable=True)
    raised: list[str] = []

    class Slow(Backoff):
        schedule = (3000,)  # time to stop the service before the copy is back

    class Service:
        name = "traced_service"
        ctx = Traced()

        @consume(shared)
        def consume_job(self, job: dict[str, Any]) -> None:
            raised.append(span_id(trace.get_current_span().get_span_context()))
            raise Slow

    container = container_factory(Service, rabbit_config)
    container.start()
    with entrypoint_waiter(container, "consume_job"):
        publish_message(
            Exchange(""), {"key": "job", "failures": 1}, routing_key=shared.name
        )
    container.stop()  # the copy is in its delay queue; the Retrier takes it back
    report = aio_consumer(shared.name, "per-delay")

    def handled() -> dict[str, Any]:
        records = [json.loads(line) for line in report.read_text().splitlines()]
        assert len(records) == 1, records
        return records[0]  # type: ignore[no-any-return]

    record = eventually(handled, timeout=15)
    assert (record["retries"], record["outcome"]) == (1, "ok")
    assert record["link"] == raised[0]


@pytest.mark.parametrize("topology", ["per-delay", "ladder"])
def test_a_traced_copy_placed_by_asyncio_links_on_the_nameko_stack(
    container_factory: Callable[..., Any],
    rabbit_config: dict[str, Any],
    publish_message: Callable[..., None],
    aio_process: Callable[..., subprocess.Popen[str]],
    topology: str,
) -> None:
    """The copy a Retrier placed in a span (``aio_traced.py``, a process of its own)
    comes back to a traced nameko service: ``retry_links(worker_ctx.data)`` links
    to that span, and so does the worker's span, as exported."""
    EXPORTER.clear()
    shared = Queue("traced_aio_jobs", durable=True)
    process = aio_process("aio_traced", shared.name, topology, str(DELAY_MS))
    publish_message(Exchange(""), {"key": "job"}, routing_key=shared.name)
    assert process.stdout is not None
    # its span's ids once the copy is placed; it cancelled its consumer before, so
    # the copy can only come back to the service, started once the process is gone
    raised = json.loads(process.stdout.readline())
    assert process.wait(timeout=10) == 0
    seen: list[tuple[int, list[tuple[str, str]]]] = []

    class Service:
        name = "traced_service"
        ctx = Traced()

        @consume(shared)
        def consume_aio_copy(self, job: dict[str, Any]) -> None:
            links = retry_links(self.ctx.data)
            seen.append(
                (
                    retries_done(self.ctx.data),
                    [(trace_id(link.context), span_id(link.context)) for link in links],
                )
            )

    config = {**rabbit_config, TOPOLOGY_CONFIG_KEY: topology}
    container_factory(Service, config).start()

    def exported() -> Any:
        spans = [
            span
            for span in EXPORTER.get_finished_spans()
            if span.name == "consume_aio_copy"
        ]
        assert len(spans) == 1, spans
        return spans[0]

    span = eventually(exported, timeout=15)
    asyncio_span = (raised["trace_id"], raised["span_id"])
    assert seen == [(1, [asyncio_span])]
    assert [(trace_id(link.context), span_id(link.context)) for link in span.links] == [
        asyncio_span
    ]
