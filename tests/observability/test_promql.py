"""docs/observability.md's PromQL, run: a real Prometheus scrapes the metrics of
``prometheus_hooks`` while messages are retried and parked on the broker, and every
query of the page's ``promql`` block answers, per queue, with a number.

Prometheus is Debian's, unpacked by scripts/setup.sh in build/tools/prometheus (or
``AIO_BACKOFF_PROMETHEUS``, the path of a ``prometheus`` binary).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry, start_http_server

from aio_backoff.events import NotPlaced, Parked
from aio_backoff.prometheus import prometheus_hooks
from tests.aio.retrying import publish
from tests.observability.recording import Events
from tests.observability.scenario import TWICE
from tests.waiting import wait_until, wait_until_true

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

ROOT = Path(__file__).parents[2]
PAGE = ROOT / "docs" / "observability.md"
BINARY = Path(
    os.environ.get(
        "AIO_BACKOFF_PROMETHEUS", ROOT / "build/tools/prometheus/usr/bin/prometheus"
    )
)


def page_queries() -> list[str]:
    """The queries of the page's ``promql`` block: a line that starts with
    whitespace continues the one before; comments and blank lines separate them."""
    block = re.search(r"```promql\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert block, "docs/observability.md has no promql block"
    queries: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line[0].isspace():
            queries[-1] += " " + line.strip()
        else:
            queries.append(line)
    return queries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A Prometheus server of this test's own, scraping one target every second."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as answer:
            body = answer.read()
        return json.loads(body) if path.startswith("/api/") else body

    def query(self, expression: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expression)
        assert answer["status"] == "success", (expression, answer)
        return list(answer["data"]["result"])

    def value(self, expression: str) -> float | None:
        result = self.query(expression)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def registry() -> Iterator[tuple[CollectorRegistry, int]]:
    """A fresh registry, exposed over HTTP on a port of its own."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield registry, port
    finally:
        server.shutdown()
        thread.join(timeout=5)


@pytest.fixture
def prometheus(
    registry: tuple[CollectorRegistry, int], tmp_path: Path
) -> Iterator[Prometheus]:
    if not BINARY.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Prometheus at {BINARY}: scripts/setup.sh fetches it")
        pytest.skip(f"no Prometheus at {BINARY} (scripts/setup.sh fetches it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: aio_backoff\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{registry[1]}']}}]\n"
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [
                str(BINARY),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        while True:  # until it answers /-/ready, exits, or 20 s pass
            if server.poll() is not None:
                pytest.fail(f"Prometheus exited: {log.read_text()[-2000:]}")
            try:
                prometheus.get("/-/ready")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"Prometheus not ready in 20 s: {log.read_text()[-2000:]}"
                    )
                time.sleep(0.1)
        yield prometheus
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def test_every_query_on_the_page_answers_per_queue(
    channel: AbstractChannel,
    target: AbstractQueue,
    make_retrier: Any,
    declared: Any,
    registry: tuple[CollectorRegistry, int],
    prometheus: Prometheus,
) -> None:
    declared.queue(f"{target.name}.parked")
    hooks = prometheus_hooks(registry[0])
    events = Events()
    retrier = make_retrier(backoff=TWICE, hooks=hooks + events.hooks())

    async def handle(message: AbstractIncomingMessage) -> None:
        raise retrier.policy.backoff()

    await retrier.consume(target, handle)
    not_placed = NotPlaced(target.name, "m", 1, 2, 30, permanent=False, reason="x")
    mine = f'{{queue="{target.name}"}}'

    # two rounds, each scraped: a rate needs the counters to move between samples
    for parked in (1, 2):
        await publish(channel, target.name)
        await wait_until(
            lambda n=parked: len(events.of(Parked)) == n, what=f"{parked} parked"
        )
        hooks.not_placed[0](not_placed)

        async def scraped(n: int = parked) -> bool:
            value = await asyncio.to_thread(
                prometheus.value, f"aio_backoff_parked_total{mine}"
            )
            return value == n

        await wait_until_true(scraped, seconds=20, what=f"a scrape of {parked} parked")

    queries = page_queries()
    assert len(queries) >= 10, queries
    for expression in queries:
        result = await asyncio.to_thread(prometheus.query, expression)
        ours = [row for row in result if row["metric"].get("queue") == target.name]
        assert ours, f"{expression}: nothing for queue {target.name}: {result}"
        grouped = {
            label.strip()
            for labels in re.findall(r"\bby \(([^)]*)\)", expression)
            for label in labels.split(",")
        } - {"le"}  # histogram_quantile consumes le
        for row in ours:
            assert grouped <= row["metric"].keys(), (expression, row)
            value = float(row["value"][1])
            assert math.isfinite(value), (expression, row)
            assert value > 0, (expression, row)
