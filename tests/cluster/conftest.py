"""Fixtures of the cluster suite: a real three-node RabbitMQ cluster of its own
(the host's 3.10 by default; ``AIO_BACKOFF_CLUSTER_VERSION=4``: RabbitMQ 4.x in
the chroot, ``scripts/cluster.sh --version 4``).

Run it on its own (it kills, restarts and forgets nodes)::

    scripts/cluster.sh start
    pytest -m cluster -p no:pytest_eventlet -p no:pytest_nameko tests/cluster
    scripts/cluster.sh stop

    scripts/cluster.sh start --version 4
    AIO_BACKOFF_CLUSTER_VERSION=4 pytest -m cluster ... tests/cluster
    scripts/cluster.sh stop --version 4

or ``AIO_BACKOFF_CLUSTER=1 pytest -m cluster ...``, which starts the cluster when it
is not up (and stops it afterwards), as scripts/test.sh does. A run that asks for
neither (no ``AIO_BACKOFF_CLUSTER=1``, no ``-m cluster``) skips these tests. After
each test the cluster has three running nodes again: what a test killed or forgot
is started again and rejoins. Each scenario's figures go to
``build/cluster-per-delay.md`` (the per-delay baseline) or
``build/cluster-ladder.md`` (the quorum ladder), ``-4`` before ``.md`` on the 4.x
cluster, which are also printed at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from tests.cluster.figures import LADDER_ROWS, Figures, LadderFigures, table
from tests.cluster.nodes import MGMT_PORTS, VERSION, Cluster

BUILD = Path(__file__).resolve().parents[2] / "build"
_SUFFIX = "" if VERSION == "3" else f"-{VERSION}"  # the 3.10 run's tables stay
RESULTS = BUILD / f"cluster-per-delay{_SUFFIX}.md"
LADDER_RESULTS = BUILD / f"cluster-ladder{_SUFFIX}.md"

_ROWS = pytest.StashKey[list[Figures]]()
_LADDER_ROWS = pytest.StashKey[list[LadderFigures]]()
_BROKER = pytest.StashKey[str]()
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


def _wants_start() -> bool:
    return os.environ.get("AIO_BACKOFF_CLUSTER") == "1"


def _asked(config: pytest.Config) -> bool:
    return _wants_start() or "cluster" in (config.option.markexpr or "")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = []
    config.stash[_LADDER_ROWS] = []


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if _asked(config):
        return
    skip = pytest.mark.skip(
        reason="the cluster suite kills nodes of its own three-node cluster; run "
        "it with AIO_BACKOFF_CLUSTER=1 pytest -m cluster tests/cluster, as "
        "scripts/test.sh does"
    )
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.stash[_CALL_REPORT] = report
    return report


def _write(
    terminalreporter: pytest.TerminalReporter, path: Path, title: str, body: str
) -> None:
    broker = terminalreporter.config.stash.get(_BROKER, "?")
    text = f"{title} ({broker}, three nodes, scripts/cluster.sh)\n\n{body}"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    terminalreporter.section(f"cluster figures ({path})")
    terminalreporter.write(text)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    rows = config.stash.get(_ROWS, [])
    if rows:
        title = "Per-delay classic delay queue, its node lost"
        _write(terminalreporter, RESULTS, title, table(rows))
    ladder = config.stash.get(_LADDER_ROWS, [])
    if ladder:
        title = "Quorum ladder, the node leading its level queues lost"
        _write(terminalreporter, LADDER_RESULTS, title, table(ladder, LADDER_ROWS))


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    """The three running nodes; started for this run (and stopped after it) when
    they are not up and ``AIO_BACKOFF_CLUSTER=1``, else the tests are skipped."""
    nodes = Cluster()
    started_here = False
    if not nodes.is_up():
        if not _wants_start():
            pytest.skip(
                f"the three-node cluster is not running (no node on management "
                f"ports {MGMT_PORTS[0]}-{MGMT_PORTS[-1]} shows 3 running members): "
                f"run scripts/cluster.sh start --version {VERSION}, or set "
                f"AIO_BACKOFF_CLUSTER=1 to have the suite start it"
            )
        nodes.run_script("start")
        started_here = True
    pytestconfig.stash[_BROKER] = f"RabbitMQ {nodes.rabbitmq_version()}"
    yield nodes
    if started_here:
        nodes.run_script("stop")


@pytest.fixture
async def whole_cluster(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster, given back with three running nodes: what the test killed or
    forgot is started again and rejoins (a forgotten node as a fresh member)."""
    try:
        yield cluster
    finally:
        await cluster.heal()


def _result(request: pytest.FixtureRequest) -> str:
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is None:
        return "not run"
    if hasattr(report, "wasxfail"):
        return "expected failure" if report.skipped else "pass (expected to fail)"
    return "pass" if report.passed else "FAIL"


@pytest.fixture
def figures(
    request: pytest.FixtureRequest, pytestconfig: pytest.Config
) -> Iterator[Figures]:
    """The figures of this test's scenario; they go into the table with its result."""
    row = Figures(scenario=request.node.name)
    yield row
    row.result = _result(request)
    pytestconfig.stash[_ROWS].append(row)


@pytest.fixture
def ladder_figures(
    request: pytest.FixtureRequest, pytestconfig: pytest.Config
) -> Iterator[LadderFigures]:
    """The figures of this quorum-ladder scenario, for build/cluster-ladder.md."""
    row = LadderFigures(scenario=request.node.name)
    yield row
    row.result = _result(request)
    pytestconfig.stash[_LADDER_ROWS].append(row)
