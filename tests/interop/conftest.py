"""Fixtures of the interop tests (asyncio process; nameko runs in subprocesses)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import brokers
from tests.aio_fixtures import *  # noqa: F403
from tests.aio_fixtures import with_parking_queues
from tests.interop.processes import (
    NamekoProcess,
    Report,
    delete_queues,
    wait_for_consumers,
)

# the matrix tests' shared checks live there; nothing has imported it yet
pytest.register_assert_rewrite("tests.interop.jobs")


@dataclass(frozen=True)
class NamekoSide:
    """The session's nameko_bridge service (``services/nameko_services.py``)."""

    prefix: str
    report: Report
    process: NamekoProcess

    @property
    def service(self) -> str:
        return f"{self.prefix}_nameko"

    @property
    def event_source(self) -> str:
        return f"{self.prefix}_src"

    @property
    def jobs_queue(self) -> str:
        return f"{self.prefix}-jobs"

    @property
    def shared_queue(self) -> str:
        return f"{self.prefix}-shared"

    @property
    def migration_queue(self) -> str:
        return f"{self.prefix}-migration"

    @property
    def queues(self) -> list[str]:
        """The queues the service consumes."""
        return [
            f"rpc-{self.service}",
            f"evt-{self.event_source}-job_for_nameko--{self.service}.on_job",
            self.jobs_queue,
            self.shared_queue,
            self.migration_queue,
        ]

    @property
    def queues_to_delete(self) -> list[str]:
        """The queues the service consumes, each with its ``{queue}.parked``
        (expiry parks by default on every stack)."""
        return list(with_parking_queues(self.queues))


@pytest.fixture(scope="session")
def interop_prefix() -> str:
    return f"interop{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def nameko_side(
    tmp_path_factory: pytest.TempPathFactory, interop_prefix: str
) -> Iterator[NamekoSide]:
    """A nameko_bridge service with rpc, event, and consume entrypoints, started
    once per session under ``nameko run`` and always stopped afterwards."""
    url = brokers.current().amqp_url
    directory = tmp_path_factory.mktemp("nameko")
    report = Report(directory / "report.jsonl")
    process = NamekoProcess.interop(
        "InteropService",
        amqp_url=url,
        prefix=interop_prefix,
        report=report.path,
        log_path=directory / "service.log",
    )
    side = NamekoSide(prefix=interop_prefix, report=report, process=process)
    try:
        asyncio.run(wait_for_consumers(url, side.queues))
    except BaseException:
        process.stop()
        raise
    try:
        yield side
    finally:
        process.stop()
        asyncio.run(
            delete_queues(
                url, side.queues_to_delete, exchanges=[f"{side.event_source}.events"]
            )
        )
