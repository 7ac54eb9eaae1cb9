"""``verify``: what the broker under test can do for the delay topologies."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from typing import Any

import pytest

from aio_backoff import BrokerReport, verify
from tests import brokers

pytestmark = pytest.mark.timeout(60)


def leftovers(api_url: str) -> list[str]:
    """Queues and exchanges verify() would have made, if any remain."""
    api = urllib.parse.urlsplit(api_url)
    login = base64.b64encode(f"{api.username}:{api.password}".encode()).decode()
    found: list[str] = []
    for kind in ("queues", "exchanges"):
        request = urllib.request.Request(
            f"{api.scheme}://{api.hostname}:{api.port}/api/{kind}?columns=name",
            headers={"Authorization": f"Basic {login}"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            found += [
                item["name"]
                for item in json.load(answer)
                if item["name"].startswith("aio-backoff.verify.")
            ]
    return found


async def test_the_broker_under_test_runs_a_quorum_ladder() -> None:
    broker = brokers.current()
    report = await verify(broker.amqp_url, management_url=broker.api_url)

    assert report.version is not None
    assert report.version.startswith(f"{broker.major}.")
    assert report.quorum_queues
    assert report.at_least_once is True  # 3.10 with stream_queue enabled, or 4.x
    # 3.10.8 stalls a quorum ladder while a leader's node is down (before 3.12.5)
    assert report.stalls_on_node_loss == (broker.major == 3)
    assert report.ladder_survives_node_loss == (broker.major == 4)
    if broker.major == 3:
        assert any("older than 3.12.5" in note for note in report.notes)
    if broker.major == 3:
        assert report.feature_flags["stream_queue"] == "enabled"
    assert "quorum ladder queues:          yes" in str(report)
    assert leftovers(broker.api_url) == []


async def test_the_plugin_is_reported_missing_with_what_to_do() -> None:
    broker = brokers.current()
    report = await verify(broker.amqp_url, management_url=broker.api_url)

    assert report.plugin is False
    [note] = [note for note in report.notes if "plugin" in note]
    if report.version and report.version.startswith("4.3"):
        assert "cannot run on RabbitMQ 4.3 or later" in note
    else:
        assert "rabbitmq-plugins enable rabbitmq_delayed_message_exchange" in note
        assert "unknown exchange type 'x-delayed-message'" in note


async def test_without_the_management_api_3x_flags_are_unknown() -> None:
    broker = brokers.current()
    report = await verify(broker.amqp_url, plugin=False)

    assert report.plugin is None
    if broker.major == 3:
        assert report.at_least_once is None
        assert any("pass management_url" in note for note in report.notes)
    else:
        assert report.at_least_once is True  # 4.x has no such flag left


@pytest.mark.skipif(
    not os.environ.get("AIO_BACKOFF_PLUGIN_AMQP_URL"),
    reason="AIO_BACKOFF_PLUGIN_AMQP_URL names no broker with the plugin",
)
async def test_a_broker_with_the_plugin() -> None:
    report = await verify(os.environ["AIO_BACKOFF_PLUGIN_AMQP_URL"])
    assert report.plugin is True


RABBITMQ_43 = os.environ.get(
    "AIO_BACKOFF_RABBITMQ43_URL", "amqp://guest:guest@127.0.0.1:5674/"
)


async def test_rabbitmq_43_cannot_run_the_plugin() -> None:
    try:
        report: Any = await verify(RABBITMQ_43)
    except OSError:
        pytest.skip(f"no RabbitMQ 4.3 at {RABBITMQ_43}")
    assert isinstance(report, BrokerReport)
    if not report.version or not report.version.startswith("4.3"):
        pytest.skip(f"{RABBITMQ_43} is RabbitMQ {report.version}, not 4.3")
    assert report.plugin is False
    assert any("cannot run on RabbitMQ 4.3 or later" in note for note in report.notes)
