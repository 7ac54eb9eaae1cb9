"""Fixtures of the fault suite: its own broker node, ledgers and the results table.

Run it on its own (it restarts and kills its node)::

    FAULTBROKER_VERSION=3 pytest -p no:pytest_eventlet -p no:pytest_nameko tests/faults

(or ``FAULTBROKER_VERSION=4`` for RabbitMQ 4.0, ``4.3`` for 4.3).

Every test here is marked ``faults``; a run that does not ask for them (no
``FAULTBROKER_VERSION``, no ``-m faults``) skips them. The node is started through
``scripts/faultbroker.sh`` when it is not up, and stopped at the end if this run
started it. Each scenario's row goes to ``build/faults-<version>.md``, which is also
printed at the end of the run.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.faults.ledger import Ledger, Row, table
from tests.faults.node import FaultNode, wanted_version

RESULTS_DIR = Path(__file__).resolve().parents[2] / "build"

_ROWS = pytest.StashKey[list[Row]]()
_BROKER = pytest.StashKey[str]()
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "faults: the fault suite; needs its own broker node (scripts/faultbroker.sh), "
        "runs only when asked (FAULTBROKER_VERSION=3|4|4.3 or -m faults)",
    )
    config.stash[_ROWS] = []


def _asked(config: pytest.Config) -> bool:
    return bool(os.environ.get("FAULTBROKER_VERSION")) or "faults" in (
        config.option.markexpr or ""
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if _asked(config):
        return
    skip = pytest.mark.skip(
        reason="the fault suite restarts its own broker node; run it with "
        "FAULTBROKER_VERSION=3 (or 4, 4.3) pytest tests/faults, as scripts/test.sh does"
    )
    for item in items:
        if item.get_closest_marker("faults"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[None]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.stash[_CALL_REPORT] = report
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    version = wanted_version()
    text = (
        f"Fault suite on {config.stash.get(_BROKER, '?')} "
        f"(scripts/faultbroker.sh --version {version})\n\n{table(rows)}"
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"faults-{version}.md"
    path.write_text(text)
    terminalreporter.section(f"fault table ({path})")
    terminalreporter.write(text)


@pytest.fixture(scope="session")
def fault_node(pytestconfig: pytest.Config) -> Iterator[FaultNode]:
    """The fault node, started for this run unless it is up already."""
    node = FaultNode(wanted_version())
    started_here = not node.is_up()
    if started_here:
        node.run_script("start")
    pytestconfig.stash[_BROKER] = f"RabbitMQ {node.rabbitmq_version()}"
    yield node
    if started_here:
        node.run_script("stop")


@pytest.fixture
def broker_label(pytestconfig: pytest.Config, fault_node: FaultNode) -> str:
    return pytestconfig.stash[_BROKER]


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique("orders")`` -> ``"faults.<test>.orders.<random>"``."""
    test = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]

    def make(label: str = "q") -> str:
        return f"faults.{test}.{label}.{uuid.uuid4().hex[:6]}"

    return make


@pytest.fixture
def ledger(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    fault_node: FaultNode,
    broker_label: str,
) -> Iterator[Callable[[str], Ledger]]:
    """``ledger("scenario title")``: a Ledger whose row goes into the table after
    the test, with the test's result."""
    made: list[Ledger] = []

    def make(title: str) -> Ledger:
        book = Ledger(scenario=title, node=fault_node, broker=broker_label)
        made.append(book)
        return book

    yield make
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is None:
        result = "not run"
    elif report.passed:
        result = "pass"
    else:
        result = "FAIL: " + _first_line(report)
    for book in made:
        row = book.row()
        row.result = result
        pytestconfig.stash[_ROWS].append(row)


def _first_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    line = message.strip().splitlines()[0] if message.strip() else "failed"
    line = line.removeprefix("AssertionError: ").replace("|", "/")
    return line if len(line) <= 110 else line[:107] + "..."


@pytest.fixture
async def connection(fault_node: FaultNode) -> AsyncIterator[AbstractRobustConnection]:
    """A robust connection to the fault node (reconnects every 0.5 s)."""
    conn = await aio_pika.connect_robust(fault_node.robust_url, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()
